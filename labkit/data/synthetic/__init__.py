"""The kit's embedded data sets: generators that write each real format, so every task runs offline.

One module per format: ``squad`` (SQuAD 2.0 JSON), ``gsm8k`` (GSM8K JSON lines), ``bioqa`` (BioASQ factoid in
SQuAD layout), ``sft`` (prompt/response pairs), ``cifar`` (CIFAR-10 arrays), ``cord19`` (CORD-19 abstract/title
rows, as SimCLS's CSV). The readers of the real formats live with their format (labkit.data.squad) or their
task (labkit.tasks.*); both hand the task the same layout.
Every generator is deterministic in its seed, and item i depends only on (seed, i) where the format allows.
"""
