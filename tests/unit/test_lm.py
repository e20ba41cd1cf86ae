"""Reading one layer's residual stream by running only the first `layer` layers."""

import pytest
import torch

from posresample.errors import ModelError
from posresample.lm import attention_implementation, check_layer, layer_activations, pick_device


@pytest.mark.parametrize("layer", [0, 1, 2, 3, 4])
def test_layer_activations_equal_hf_hidden_states(tiny_model, tokenizer, layer):
    enc = tokenizer(["The back door was open.", "I like it"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert tokenizer.padding_side == "right"
    full = tiny_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    ours = layer_activations(tiny_model, ids, mask, layer)
    real = mask.bool()
    assert torch.allclose(ours[real], full[layer][real], atol=1e-5)
    assert len(tiny_model.model.layers) == tiny_model.config.num_hidden_layers  # layers restored


def test_layer_out_of_range_is_refused(tiny_model):
    with pytest.raises(ModelError, match="out of range"):
        check_layer(tiny_model, 5)
    with pytest.raises(ModelError):
        check_layer(tiny_model, -1)


def test_gemma2_gets_an_attention_path_that_keeps_the_soft_cap():
    assert attention_implementation("gemma2") == "eager"
    assert attention_implementation("gemma2", "flex_attention") == "flex_attention"
    assert attention_implementation("llama") == "sdpa"


def test_cuda_on_a_cpu_machine_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="CUDA is not available"):
        pick_device("cuda:0")
    assert pick_device("auto").type == "cpu"
