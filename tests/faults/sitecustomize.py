"""Fault injection for real-worker tests, loaded only by a test's worker subprocess (whose PYTHONPATH starts with
this folder). It makes chosen phases slow, as a final validation or a generation batch on a real model is (the
issue measured 371-432 s of validation), so that a test can kill the worker in the middle of one.

FTSTUDIO_FAULT_VALIDATION_BATCH_SECONDS: added to every validation batch of `Trainer`.
FTSTUDIO_FAULT_GENERATION_BATCH_SECONDS: added before each finished generation batch is handed back.
FTSTUDIO_FAULT_TRAINING_STEP_SECONDS: added to every training step of `Trainer` (the tiny model trains 12 steps in
under 3 s on an idle machine: a test that acts midway needs steps it can catch).
FTSTUDIO_FAULT_DECODE_STEP_SECONDS: added to every step of the inference engine's batch, and the end-of-sequence
token is never chosen, so a stream runs to its max_tokens slowly enough for a test to kill its process midway.
FTSTUDIO_FAULT_CHECK_SECONDS: added to every automatic check of an output (a pass over many outputs that a test
can kill midway).
FTSTUDIO_FAULT_RANK_FAILS="R:S": the distributed rank R (torchrun's RANK) raises at the start of its step S + 1,
as a rank whose device fails does.
"""

import os
import time

_validation = float(os.environ.get("FTSTUDIO_FAULT_VALIDATION_BATCH_SECONDS", "0") or 0)
_generation = float(os.environ.get("FTSTUDIO_FAULT_GENERATION_BATCH_SECONDS", "0") or 0)
_step = float(os.environ.get("FTSTUDIO_FAULT_TRAINING_STEP_SECONDS", "0") or 0)
_rank_fails = os.environ.get("FTSTUDIO_FAULT_RANK_FAILS", "")
_decode = float(os.environ.get("FTSTUDIO_FAULT_DECODE_STEP_SECONDS", "0") or 0)
_check = float(os.environ.get("FTSTUDIO_FAULT_CHECK_SECONDS", "0") or 0)

if _check:
    import worker.checks

    _run_check = worker.checks.run_check

    def run_check(*args, **kwargs):
        time.sleep(_check)
        return _run_check(*args, **kwargs)

    worker.checks.run_check = run_check

if _decode:
    import worker.runner

    _engine_step = worker.runner.BatchRunner.step

    def engine_step(self, *args, **kwargs):
        time.sleep(_decode)
        return _engine_step(self, *args, **kwargs)

    worker.runner.BatchRunner.step = engine_step
    worker.runner.eos_ids = lambda model, tokenizer: set()

if _step:
    from transformers import Trainer

    _training_step = Trainer.training_step

    def training_step(self, *args, **kwargs):
        time.sleep(_step)
        return _training_step(self, *args, **kwargs)

    Trainer.training_step = training_step

if _validation:
    from transformers import Trainer

    _prediction_step = Trainer.prediction_step

    def prediction_step(self, *args, **kwargs):
        time.sleep(_validation)
        return _prediction_step(self, *args, **kwargs)

    Trainer.prediction_step = prediction_step

if _generation:
    import worker.generate

    _generate = worker.generate.generate

    def generate(model, tokenizer, prompts, config, *args, on_batch=None, **kwargs):
        def slow(indices, results):
            time.sleep(_generation)
            on_batch(indices, results)

        return _generate(model, tokenizer, prompts, config, *args, on_batch=slow if on_batch else None, **kwargs)

    worker.generate.generate = generate

if _rank_fails and os.environ.get("RANK") == _rank_fails.split(":")[0]:
    from transformers import Trainer

    _failing_step, _fails_at = Trainer.training_step, int(_rank_fails.split(":")[1])

    def failing_step(self, *args, **kwargs):
        if self.state.global_step >= _fails_at:
            raise RuntimeError(f"injected fault: rank {os.environ['RANK']} lost its device at step {_fails_at + 1}")
        return _failing_step(self, *args, **kwargs)

    Trainer.training_step = failing_step
