"""tinylm: from raw text to a trained small language model and an honest report about it.

The names a library user needs, importable from ``tinylm`` directly (this imports torch; the
command line imports only what each command needs, from the modules themselves).
"""
__version__ = "0.1.0"

from .checkpoint import load_for_inference
from .config import Config, build_config
from .errors import TinyLMError
from .generate import generate, generate_text
from .model import GPT
from .tokenizer import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer
from .train import Trainer, train

__all__ = ["GPT", "BPETokenizer", "CharTokenizer", "Config", "TinyLMError", "Tokenizer", "Trainer", "__version__",
           "build_config", "generate", "generate_text", "load_for_inference", "load_tokenizer", "train"]
