"""Other tools' model folders: GPT-2 weights in (``hf_import``), Hugging Face folders out (``hf_export``).

``pretrained`` is where a run's ``--train.init_from`` comes from: a tinylm run or checkpoint, a
local Hugging Face GPT-2 folder, or a hub name such as ``gpt2``. Neither direction needs
``transformers``; the tests use it to check that both sides compute the same logits.
"""
