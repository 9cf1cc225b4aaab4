"""Generation: decoding strategies, the rows being decoded with their KV cache, logits processors, the table of
which setting each strategy reads, and the decode report. Import the modules themselves
(``from tinylm.generation.generate import generate_text``)."""
