import pytest
import torch

from lightning_topo.encoding import EncodedBatch, encode_batch


def test_encode_hf_model_returns_all_layers(tiny_classifier, tiny_batch):
    with torch.no_grad():
        enc = encode_batch(tiny_classifier, tiny_batch)
    assert isinstance(enc, EncodedBatch)
    assert enc.num_layers == 2
    assert enc.hidden_states[-1].shape == (6, 10, 32)
    assert torch.equal(enc.attention_mask, tiny_batch["attention_mask"])
    assert enc.logits.shape == (6, 2)
    assert torch.equal(enc.labels, tiny_batch["labels"])


def test_encode_rejects_non_mapping(tiny_classifier):
    with pytest.raises(TypeError, match="mapping"):
        encode_batch(tiny_classifier, [1, 2, 3])


def test_encode_rejects_missing_input_ids(tiny_classifier):
    with pytest.raises(ValueError, match="input_ids"):
        encode_batch(tiny_classifier, {"attention_mask": torch.ones(2, 3)})


def test_module_device_prefers_the_device_attribute():
    from lightning_topo.encoding import module_device

    class WithDevice(torch.nn.Module):
        device = torch.device("meta")  # a LightningModule reports its device like this

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    assert module_device(WithDevice()) == torch.device("meta")
    assert module_device(torch.nn.Linear(2, 2).double()) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters


def test_encode_module_must_return_encoded_batch(tiny_batch):
    class Bad(torch.nn.Module):
        def encode(self, batch):
            return batch["input_ids"]

    with pytest.raises(TypeError, match="Bad.encode must return EncodedBatch, got Tensor"):
        encode_batch(Bad(), tiny_batch)


def test_max_sequence_length_of_each_position_scheme():
    from transformers import BertConfig, DebertaV2Config, RobertaConfig

    from lightning_topo.encoding import max_sequence_length

    assert max_sequence_length(BertConfig(max_position_embeddings=64)) == 64
    # RoBERTa's positions start after the padding index: 514 positions hold 512 tokens
    assert max_sequence_length(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_sequence_length({"model_type": "pruned_roberta", "max_position_embeddings": 130, "pad_token_id": 1}) == 128
    assert max_sequence_length(DebertaV2Config(max_position_embeddings=512)) == 512
    assert max_sequence_length(DebertaV2Config(max_position_embeddings=512, position_biased_input=False)) is None
    assert max_sequence_length({"model_type": "bert"}) is None and max_sequence_length(None) is None
