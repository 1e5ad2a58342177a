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


CFG = {"task": "t5_qa", "model": {"preset": "tiny"}, "train": {"batch_size": 4},
       "data": {"dataset": "gsm8k", "train_examples": 32, "val_examples": 10, "max_length": 96, "target_length": 48,
                "doc_stride": 0}}


def _answers(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a replicated model (as under DDP): the questions it answered itself and the answers scored."""
    import json
    import os
    from pathlib import Path

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        task = t5_qa.build_task(Config.model_validate(CFG))
        asked, scored, generate, score = [], [], T5ForConditionalGeneration.generate, t5_qa.score
        T5ForConditionalGeneration.generate = lambda self, **kw: asked.append(len(kw["input_ids"])) or generate(self, **kw)
        t5_qa.score = lambda dataset, generated, *rest: scored.append(generated) or score(dataset, generated, *rest)
        metrics = task.evaluate(task.model.eval(), 4, 10)
        Path(out, f"{rank}.json").write_text(json.dumps({"asked": asked, "answers": scored[0], "metrics": metrics}))
    finally:
        dist.destroy_process_group()


def test_replicated_ranks_answer_a_share_each_and_score_every_answer(tmp_path, free_port):
    """Under DDP or ZeRO-2 each rank holds the whole model: two ranks answer 5 of the 10 questions each, and both
    score the same 10 answers that one process gives."""
    import json

    torch.manual_seed(0)
    task = t5_qa.build_task(Config.model_validate(CFG))
    answers, score = [], t5_qa.score
    t5_qa.score = lambda dataset, generated, *rest: answers.append(generated) or score(dataset, generated, *rest)
    try:
        alone = task.evaluate(task.model.eval(), 4, 10)
    finally:
        t5_qa.score = score
    torch.multiprocessing.start_processes(_answers, args=(2, free_port, str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [sum(r["asked"]) for r in ranks] == [5, 5] and ranks[0]["asked"] == [4, 1]
    assert ranks[0]["answers"] == ranks[1]["answers"] == answers[0] and len(answers[0]) == 10
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == alone
