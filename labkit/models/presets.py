"""The sizes each model family may take (model.preset): plain data, so that a check of the settings (labkit.preflight)
reads them without importing the model libraries, seconds in every notebook that only launches training processes."""

# BertConfig's defaults are bert-base-uncased's architecture; tiny is for CPU smoke runs.
BERT = {
    "tiny": ("prajjwal1/bert-tiny", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)),
    "base": ("bert-base-uncased", {}),
    "large": ("bert-large-uncased", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)),
}

# GPT2Config's defaults are gpt2's (124M) architecture with its 50,257-token vocabulary; the real
# presets keep that vocabulary so parameter counts and memory are GPT-2's even when an offline
# tokenizer uses only the first rows. tiny is for CPU smoke runs and has no pretrained weights.
GPT2 = {
    "tiny": (None, dict(n_embd=128, n_layer=2, n_head=4)),
    "small": ("openai-community/gpt2", {}),
    "medium": ("openai-community/gpt2-medium", dict(n_embd=1024, n_layer=24, n_head=16)),  # = "gpt2-medium"
    "large": ("openai-community/gpt2-large", dict(n_embd=1280, n_layer=36, n_head=20)),
}

# blocks per stage, cardinality (groups), bottleneck width of the first stage, stem channels
RESNEXT = {
    "tiny": dict(num_blocks=(1, 1, 1), cardinality=2, bottleneck_width=4, stem=8),  # CPU smoke runs
    "resnext29_2x64d": dict(num_blocks=(3, 3, 3), cardinality=2, bottleneck_width=64, stem=64),
    "resnext29_4x64d": dict(num_blocks=(3, 3, 3), cardinality=4, bottleneck_width=64, stem=64),  # the original lab's
    "resnext29_32x4d": dict(num_blocks=(3, 3, 3), cardinality=32, bottleneck_width=4, stem=64),
}

ROBERTA = {
    "tiny": ("FacebookAI/roberta-base", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=256)),
    "base": ("FacebookAI/roberta-base", {}),
    "large": ("FacebookAI/roberta-large", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                               intermediate_size=4096)),
}

# T5Config's defaults are t5-small's architecture; tiny is for CPU smoke runs. The hub names are the
# canonical ids of t5-small / t5-base / t5-large (the short names redirect to them).
T5 = {
    "tiny": ("google-t5/t5-small", dict(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4)),
    "small": ("google-t5/t5-small", {}),
    "base": ("google-t5/t5-base", dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12)),
    "large": ("google-t5/t5-large", dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16)),
}

BY_TASK = {"bert_squad": BERT, "cifar_resnext": RESNEXT, "gpt2_sft": GPT2, "t5_qa": T5, "simcls": ROBERTA}  # the task's own model
