"""bench/serve_llamacpp.py imports and parses its arguments without llama_cpp, torch or a server (it cannot rot)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "serve_llamacpp.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_llamacpp", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_compare_like_with_like_in_three_rounds(bench):
    args = bench.parse_args([])
    assert (args.requests, args.max_tokens, args.rounds, args.quant) == (32, 64, 3, "f32")
    assert args.llama_server is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--quant", "q4_0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])


def test_a_llama_server_that_is_not_an_executable_is_refused_by_name(bench, tmp_path, capsys):
    missing = tmp_path / "llama-server"
    with pytest.raises(SystemExit):
        bench.parse_args(["--llama-server", str(missing)])
    assert f"--llama-server {missing} is not an executable file" in capsys.readouterr().err


def test_llama_cpp_python_serves_the_requests_one_after_another_without_cutting_them_off(bench, tmp_path):
    """Its server interrupts a streaming answer when the next request arrives unless told not to."""
    args = bench.parse_args(["--requests", "8"])
    command = bench.llama_cpp_command(args, tmp_path / "m.gguf", threads=1, port=9000, n_ctx=512)
    assert command[:3] == [sys.executable, "-m", "llama_cpp.server"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags["--interrupt_requests"] == "False" and flags["--logits_all"] == "False"
    assert (flags["--model"], flags["--n_threads"], flags["--n_ctx"]) == (str(tmp_path / "m.gguf"), "1", "512")


def test_the_cpp_server_gets_one_slot_per_request_each_with_its_context(bench, tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    args = bench.parse_args(["--requests", "8", "--llama-server", str(binary)])
    command = bench.llama_cpp_command(args, tmp_path / "m.gguf", threads=2, port=9000, n_ctx=512)
    assert command[0] == str(binary)
    assert "--cont-batching" in command and "--jinja" in command
    assert command[command.index("--parallel") + 1] == "8"
    assert command[command.index("--ctx-size") + 1] == str(8 * 512)
