"""Random Hugging Face T5 models saved to disk: the reference the parity tests load."""

import torch
import transformers

TINY = dict(
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)


def save_random_t5(path, *, cls=transformers.T5ForConditionalGeneration, seed=0, **config):
    """A random `cls` (tiny shapes unless overridden) saved to `path`, in eval mode.

    An untied LM head gets weights of its own, as Flan-T5's checkpoints have (transformers 5
    would otherwise tie it to the embedding).
    """
    torch.manual_seed(seed)
    model = cls(transformers.T5Config(**{**TINY, **config})).eval()
    if not config.get("tie_word_embeddings", True) and hasattr(model, "lm_head"):
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(path)
    return model
