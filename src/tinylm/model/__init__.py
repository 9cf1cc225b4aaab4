"""The model: the GPT (gpt.py), its attention kernel, the output head's chunked loss, fp8 training's layer swap.
Import the modules themselves (``from tinylm.model.gpt import GPT``)."""
