"""Data: the real formats and their readers (squad), batching (packing), tokenizers, where data comes from
(sources: the Hub, the validation hold-out rule) and the embedded generators of each format (synthetic/)."""
