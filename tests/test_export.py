"""Exports on the tiny Llama: the portable adapter, the merged folder, GGUF f16 / q8_0 read back by transformers'
GGUF loader, the Ollama Modelfile, `export_model`'s errors, and the run page's Export section (PMs only)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.runs import base_models
from apps.runs.models import ExportStatus, Run, RunExport, RunStatus
from tests import runs_setup
from tests.export_setup import greedy, held_out_messages, make_adapter, prompt_ids
from tests.runs_setup import small_version

tiny_base_model = runs_setup.tiny_base_model
PUBLIC_ID = "example-org/tiny-llama-chat"


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture
def run(db, team, tiny_base_model, tiny_adapter) -> Run:
    tiny_base_model.public_id = PUBLIC_ID
    tiny_base_model.save()
    return Run.objects.create(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        status=RunStatus.SUCCEEDED,
        adapter_path=str(tiny_adapter),
    )


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tiny_adapter):
    """Base + adapter through peft, its merged copy, the tokenizer and a held-out demo prompt."""
    from peft import PeftModel

    from worker.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    peft = PeftModel.from_pretrained(load_model(str(tiny_model_dir), device="cpu"), str(tiny_adapter)).eval()
    return {"tokenizer": tokenizer, "peft": peft, "ids": prompt_ids(tokenizer, held_out_messages())}


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


# --- the adapter ----------------------------------------------------------------------------------------------
def test_the_exported_adapter_names_the_public_id_and_loads_with_peft_on_a_base_given_by_path(
    run, tmp_path, reference, tiny_model_dir
):
    import torch
    from peft import PeftModel

    from worker.models import load_model

    call_command(
        "export_model",
        run=run.pk,
        format="adapter",
        out=str(tmp_path / "tuned.zip"),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    with zipfile.ZipFile(tmp_path / "tuned.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
        text = "".join(archive.read(n).decode() for n in archive.namelist() if not n.endswith(".safetensors"))
    folder = tmp_path / "unzipped" / "tuned"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == PUBLIC_ID
    assert str(tiny_model_dir) not in text and "/var/" not in text  # no server path anywhere
    loaded = PeftModel.from_pretrained(load_model(str(tiny_model_dir), device="cpu"), str(folder)).eval()
    assert torch.equal(_logits(loaded, reference["ids"]), _logits(reference["peft"], reference["ids"]))


def test_the_run_pages_adapter_zip_names_the_public_id_too(run, team):
    response = team.client("reviewer").get(f"/p/support/runs/{run.pk}/adapter.zip")
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        config = json.loads(archive.read(f"run-{run.pk}-adapter/adapter_config.json"))
    assert config["base_model_name_or_path"] == PUBLIC_ID


# --- merged -------------------------------------------------------------------------------------------------
def test_the_merged_folder_loads_with_plain_transformers_and_writes_what_base_plus_adapter_writes(
    run, tmp_path, reference
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    call_command(
        "export_model",
        run=run.pk,
        format="merged",
        out=str(tmp_path / "merged"),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names) and "adapter_config.json" not in names
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()  # no peft involved
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    ids = prompt_ids(tokenizer, held_out_messages())
    assert torch.equal(ids, reference["ids"])
    assert torch.allclose(_logits(merged, ids), _logits(reference["peft"], ids), atol=1e-4)
    assert greedy(merged, ids) == greedy(reference["peft"], ids)
    with reference["peft"].disable_adapter():  # the adapter matters: the base alone answers otherwise
        assert greedy(reference["peft"], ids) != greedy(merged, ids)


# --- GGUF ---------------------------------------------------------------------------------------------------
def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


def test_gguf_f16_has_llama_cpps_names_and_tokenizer_and_transformers_reads_back_the_merged_model(
    run, tmp_path, reference
):
    import gguf
    import torch

    from worker.models import shipped_gguf_path

    out = io.StringIO()
    call_command(
        "export_model", run=run.pk, format="gguf", out=str(tmp_path / "gguf"), stdout=out, stderr=io.StringIO()
    )
    path = tmp_path / "gguf" / "model-f16.gguf"
    assert out.getvalue().split() == [str(path), str(tmp_path / "gguf" / "Modelfile")]

    mine = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in mine.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == "llama" and fields["general.base_model.0.name"] == PUBLIC_ID
    assert fields["llama.block_count"] == 2 and fields["llama.context_length"] == 512
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.rope.freq_base"] == 10000.0
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    # The tokenizer section equals what llama.cpp's converter wrote for the same tokenizer (the shipped SmolLM2 GGUF).
    shipped = gguf.GGUFReader(str(shipped_gguf_path()))
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.chat_template",
    ):
        assert fields[key] == shipped.fields[key].contents(), key
    # llama.cpp's tensor names; norms stay f32, matrices f16; tied embeddings: no output.weight (as llama.cpp does).
    types = {t.name: t.tensor_type.name for t in mine.tensors}
    layer0 = {n: t for n, t in types.items() if n.startswith("blk.0.")}
    assert set(layer0) == {t.name for t in shipped.tensors if t.name.startswith("blk.0.")}
    assert types["token_embd.weight"] == "F16" and types["output_norm.weight"] == "F32" and "output.weight" not in types
    assert layer0["blk.0.attn_norm.weight"] == "F32" and layer0["blk.0.attn_q.weight"] == "F16"

    loaded = _load_gguf(path)
    ids = reference["ids"]
    expected = _logits(reference["peft"], ids)
    got = _logits(loaded, ids)
    assert torch.allclose(got, expected, atol=5e-3), (got - expected).abs().max()  # f16 weights, f32 compute
    assert greedy(loaded, ids) == greedy(reference["peft"], ids)


def test_q_and_k_rows_are_permuted_into_llama_cpps_rotary_order():
    """transformers' loader undoes this permutation, so a writer that skipped it would load scrambled attention."""
    import numpy as np

    from worker.export import permute_qk

    weights = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8 * 3, 2)  # 3 heads of 8 rows
    permuted = permute_qk(weights, 3, 3)
    assert not np.array_equal(permuted, weights)
    # Within a head the two rotary halves [0..3 | 4..7] interleave to 0,4,1,5,2,6,3,7 (llama.cpp's order).
    assert permuted[:8, 0].tolist() == weights[[0, 4, 1, 5, 2, 6, 3, 7], 0].tolist()
    kv = permute_qk(np.arange(16, dtype=np.float32).reshape(16, 1), 4, 2)  # K: grouped by the 2 KV heads
    assert kv[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_gguf_q8_0_loads_and_runs_close_to_the_merged_model(run, tmp_path, reference):
    import gguf
    import torch

    call_command(
        "export_model",
        run=run.pk,
        format="gguf",
        quant="q8_0",
        out=str(tmp_path / "tuned-q8.gguf"),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    path = tmp_path / "tuned-q8.gguf"
    tensors = gguf.GGUFReader(str(path)).tensors
    types = {t.name: t.tensor_type.name for t in tensors}
    assert types["blk.1.ffn_down.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.1.ffn_norm.weight"] == "F32"
    f16_bytes = sum(2 * int(t.n_elements) for t in tensors)
    assert sum(int(t.n_bytes) for t in tensors) < 0.6 * f16_bytes  # 8.5 bits a weight instead of 16
    assert (tmp_path / "Modelfile").is_file()
    loaded = _load_gguf(path)
    got, expected = _logits(loaded, reference["ids"]), _logits(reference["peft"], reference["ids"])
    assert torch.isfinite(got).all() and torch.allclose(got, expected, atol=0.05), (got - expected).abs().max()
    assert len(greedy(loaded, reference["ids"], tokens=8)) == 8


def test_gguf_f32_holds_the_exact_weights_the_engine_runs_on_a_cpu(tiny_model_dir, tiny_adapter, tmp_path, reference):
    """The benchmark against llama.cpp serves this file: it must be the merged model, unrounded (f32 everywhere)."""
    import gguf
    import torch

    from worker.export import ExportError, merge_adapter, write_gguf

    merge_adapter(tiny_model_dir, tiny_adapter, tmp_path / "merged", base_model_id=PUBLIC_ID)
    path = write_gguf(tmp_path / "merged", tmp_path / "tuned-f32.gguf", quant="f32", base_model_id=PUBLIC_ID)
    mine = gguf.GGUFReader(str(path))
    assert mine.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert {t.tensor_type.name for t in mine.tensors} == {"F32"}
    loaded = _load_gguf(path)
    got, expected = _logits(loaded, reference["ids"]), _logits(reference["peft"], reference["ids"])
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()  # f16 drifts by ~1e-3
    with pytest.raises(ExportError, match="Unknown GGUF quantization 'q4_0': choose one of f16, q8_0, f32"):
        write_gguf(tmp_path / "merged", tmp_path / "x.gguf", quant="q4_0")


def test_the_modelfile_points_at_the_gguf_and_speaks_the_chat_template(run, tmp_path, reference):
    call_command(
        "export_model", run=run.pk, format="gguf", out=str(tmp_path / "g"), stdout=io.StringIO(), stderr=io.StringIO()
    )
    text = (tmp_path / "g" / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    # The ChatML turns the HF template renders, in Ollama's template: system, each turn, then the assistant's cue.
    tokenizer = reference["tokenizer"]
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert "<|im_start|>system\n{{ .System }}<|im_end|>\n" in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text and text.count("<|im_start|>assistant\n") == 1
    # SmolLM2's template adds a default system turn when there is none: the Modelfile keeps it as SYSTEM.
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text


# --- the command's errors -------------------------------------------------------------------------------------
def test_export_model_says_what_is_wrong(run, tmp_path):
    def export(**kwargs):
        with pytest.raises(CommandError) as caught:
            call_command("export_model", stdout=io.StringIO(), stderr=io.StringIO(), **kwargs)
        return str(caught.value)

    assert "No run with id 999999" in export(run=999999, format="adapter", out=str(tmp_path / "a"))
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
    assert f"Run {run.pk} is failed: only a succeeded run" in export(
        run=run.pk, format="merged", out=str(tmp_path / "m")
    )
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, adapter_path=str(tmp_path / "gone"))
    assert "does not exist" in export(run=run.pk, format="gguf", out=str(tmp_path / "g"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "adapter_config.json").write_text("{}")
    Run.objects.filter(pk=run.pk).update(adapter_path=str(tmp_path / "partial"))
    assert "is missing adapter_model.safetensors" in export(run=run.pk, format="adapter", out=str(tmp_path / "a"))
    Run.objects.filter(pk=run.pk).update(adapter_path=run.adapter_path)
    (tmp_path / "a-file").write_text("x")
    message = export(run=run.pk, format="merged", out=str(tmp_path / "a-file" / "merged"))
    assert "Cannot write" in message and "is a file, not a folder" in message
    assert "--quant applies to GGUF exports only" in export(
        run=run.pk, format="merged", quant="q8_0", out=str(tmp_path / "m2")
    )
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


# --- the run page ---------------------------------------------------------------------------------------------
def test_only_pms_see_and_use_the_export_section(run, team):
    url = run.get_absolute_url()
    assert 'id="export-gguf"' in team.client("pm").get(url).content.decode()
    for role in ("designer", "reviewer"):
        page = team.client(role).get(url).content.decode()
        assert 'id="run-exports"' not in page and "Export GGUF" not in page
        assert team.client(role).post(f"/p/support/runs/{run.pk}/exports/", {"format": "gguf"}).status_code == 403
    assert not RunExport.objects.exists()


def test_a_pm_exports_gguf_from_the_run_page_and_downloads_it_when_ready(
    run, team, eager, django_capture_on_commit_callbacks
):
    client = team.client("pm")
    with django_capture_on_commit_callbacks(execute=True):
        fragment = client.post(
            f"/p/support/runs/{run.pk}/exports/", {"format": "gguf", "quant": "q8_0"}, headers={"HX-Request": "true"}
        ).content.decode()
    assert 'id="run-exports"' in fragment and "<html" not in fragment
    job = RunExport.objects.get()
    assert (job.format, job.quant, job.status) == ("gguf", "q8_0", ExportStatus.SUCCEEDED), job.error
    page = client.get(run.get_absolute_url()).content.decode()
    download = f"/p/support/runs/{run.pk}/exports/{job.pk}/download"
    assert download in page and "every 2s" not in page.split('id="run-exports"')[1].split(">")[0]
    response = client.get(download)
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as archive:
        names = sorted(archive.namelist())
    assert names == [f"support-run-{run.pk}-gguf-q8_0/Modelfile", f"support-run-{run.pk}-gguf-q8_0/model-q8_0.gguf"]
    assert team.client("designer").get(download).status_code == 403
    # Asking again for the same export gives the ready one instead of converting again.
    client.post(f"/p/support/runs/{run.pk}/exports/", {"format": "gguf", "quant": "q8_0"})
    assert RunExport.objects.count() == 1


@pytest.mark.django_db  # the router reads the run's base model to pick its hardware queue
def test_exports_run_on_the_default_queue_not_beside_training():
    from ftstudio.celery import app

    def queue(task: str) -> str:
        return app.amqp.router.route({}, task, args=(1,), kwargs={})["queue"].name

    app.loader.import_default_modules()
    assert "runs.export_run" in app.tasks
    assert queue("runs.export_run") == "default" and queue("runs.train_run") == "gpu"


def test_an_export_that_fails_says_why_on_the_page_and_a_pending_one_polls(run, team, tmp_path):
    from apps.runs.exports import execute_export, request_export

    job = request_export(run=run, fmt="merged", user=team.pm)  # queued only: no worker in this test
    page = team.client("pm").get(run.get_absolute_url()).content.decode()
    assert "every 2s" in page.split('id="run-exports"')[1].split(">")[0] and "Queued" in page
    Run.objects.filter(pk=run.pk).update(adapter_path=str(tmp_path / "deleted"))
    assert execute_export(job.pk) == ExportStatus.FAILED
    assert execute_export(job.pk) == "skipped"  # a second delivery of the message
    page = team.client("pm").get(run.get_absolute_url()).content.decode()
    assert "Failed" in page and "The adapter folder …/deleted does not exist." in page
    assert str(tmp_path) not in page  # the page never shows where the server keeps files
    bad = (
        team.client("pm")
        .post(f"/p/support/runs/{run.pk}/exports/", {"format": "onnx"}, headers={"HX-Request": "true"})
        .content.decode()
    )
    assert "Unknown export format &#x27;onnx&#x27;" in bad


# --- where the public id comes from ---------------------------------------------------------------------------
def test_register_model_takes_a_public_id_and_the_shipped_model_has_one(db, settings, tiny_model_dir):
    settings.FTSTUDIO_MODEL_ROOTS = [*settings.FTSTUDIO_MODEL_ROOTS, Path(tiny_model_dir).parent]
    call_command("register_model", "tiny", str(tiny_model_dir), "--public-id", "org/tiny", stdout=io.StringIO())
    from apps.runs.models import BaseModel

    assert BaseModel.objects.get(name="tiny").portable_id == "org/tiny"
    call_command("register_model", "tiny2", str(tiny_model_dir), stdout=io.StringIO())
    assert BaseModel.objects.get(name="tiny2").portable_id == "tiny2"  # a name, never the server path
    assert base_models.ensure_shipped_base_model().public_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_gguf_base_models_export_keeps_the_tokenizer_settings_llama_cpp_wrote_for_it(tiny_model_dir, tmp_path):
    """The safetensors cache of the shipped GGUF says eos <|im_start|> and add_bos on (a transformers round-trip
    artefact); the export keeps what the original file says: eos <|im_end|>, no BOS, the smollm pre-tokenizer."""
    import gguf

    from worker.export import write_gguf
    from worker.models import shipped_gguf_path

    path = write_gguf(tiny_model_dir, tmp_path / "t.gguf", source_gguf=shipped_gguf_path())
    mine, shipped = gguf.GGUFReader(str(path)).fields, gguf.GGUFReader(str(shipped_gguf_path())).fields
    for key in (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
    ):
        assert mine[key].contents() == shipped[key].contents(), key
    assert mine["tokenizer.ggml.pre"].contents() == "smollm" and mine["tokenizer.ggml.eos_token_id"].contents() == 2
