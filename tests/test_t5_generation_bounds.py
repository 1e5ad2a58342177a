"""T5 validation generates no further than the answers need: each answer at most as long as the longest
reference answer (end of sequence counted), ending at the end-of-sequence token, over the capped examples."""
import torch
from transformers import T5ForConditionalGeneration

from labkit.config import Config
from labkit.tasks import t5_qa


def test_generation_is_bounded_by_the_reference_answers(monkeypatch):
    cfg = Config.model_validate({"task": "t5_qa", "model": {"preset": "tiny"}, "train": {"batch_size": 4},
                                 "data": {"dataset": "bioqa", "train_examples": 32, "val_examples": 12,
                                          "max_length": 96, "target_length": 64, "doc_stride": 0}})
    torch.manual_seed(0)
    task = t5_qa.build_task(cfg)
    calls, generate = [], T5ForConditionalGeneration.generate

    def recording(self, *args, **kwargs):
        calls.append({k: kwargs[k] for k in ("max_new_tokens", "eos_token_id", "synced_gpus")} | {"n": len(kwargs["input_ids"])})
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(T5ForConditionalGeneration, "generate", recording)
    task.evaluate(task.model, 4, 8)  # the first 8 validation questions, 4 at a time
    tokenizer = task.collate_fn.tokenizer
    longest = max(len(ids) for ids in tokenizer([answer for _, answer in task.val_set[:8]])["input_ids"])
    assert longest < cfg.data.target_length  # short factoid answers: the bound is theirs, not target_length
    assert [c["n"] for c in calls] == [4, 4]
    assert all(c["max_new_tokens"] == longest and c["eos_token_id"] == tokenizer.eos_token_id for c in calls)
    assert not any(c["synced_gpus"] for c in calls)  # one process: nothing to keep in step
