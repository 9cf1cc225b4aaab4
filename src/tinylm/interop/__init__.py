"""Other tools' model folders: Hugging Face GPT-2, GPT-NeoX and Llama-family folders in (``hf_import``) and out
(``hf_export``).

``hf_names`` is the one table of their names and settings, read both ways. ``hf_modeling_tinylm`` is
not imported by tinylm: it is the modeling code ``--format hf-code`` copies into a folder, for
transformers' ``trust_remote_code``, so it imports transformers and never tinylm. ``pretrained`` is where a
run's ``--train.init_from`` comes from: a tinylm run or checkpoint, a local Hugging Face folder, or
a hub name such as ``gpt2``; ``tinylm eval`` scores a Hugging Face folder through ``hf_import`` too.
Neither direction needs ``transformers``; the tests use it to check that both sides compute the same logits.

``artifact`` is tinylm's own out: the whole model quantized and compressed in one file (``tinylm export
--quantize``), its size before training (the byte budget), read back by ``eval``, ``sample`` and ``info``;
``quantize`` holds its integers and scales.
"""
