"""find_hf_model / replace_submodule on user-style modules: the model at self.net, nested in a
ModuleDict, an AutoModel encoder with the user's own head, aliases, and the errors (none found,
several found, a bad model_attr)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert_config
from torch import nn

from lightning_topo.representations.modules import find_hf_model, hf_model_paths, replace_submodule


def _classifier(seed=0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config())


def _encoder(seed=0):
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(tiny_bert_config())


class AtNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _classifier()
        self.dropout = nn.Dropout(0.1)


class InModuleDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.towers = nn.ModuleDict({"text": nn.Sequential(_classifier()), "extra": nn.Linear(3, 3)})


class EncoderAndHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _encoder()
        self.head = nn.Linear(32, 3)


class TwoModels(nn.Module):
    def __init__(self):
        super().__init__()
        self.student = _classifier(0)
        self.teacher = _classifier(1)


def test_model_at_self_net():
    module = AtNet()
    path, model = find_hf_model(module)
    assert path == "net" and model is module.net


def test_model_nested_in_a_module_dict():
    module = InModuleDict()
    path, model = find_hf_model(module)
    assert path == "towers.text.0" and model is module.towers["text"][0]


def test_automodel_with_own_head_finds_the_encoder_not_the_head():
    module = EncoderAndHead()
    path, model = find_hf_model(module)
    assert path == "backbone" and model is module.backbone
    assert type(model).__name__ == "BertModel"


def test_inner_models_are_not_candidates_even_when_aliased():
    module = AtNet()
    module.encoder = module.net.bert  # a user's shortcut to the classifier's encoder
    assert hf_model_paths(module) == {"net": ["net"]}
    assert find_hf_model(module)[0] == "net"


def test_two_models_is_an_ambiguity_error_listing_both():
    with pytest.raises(ValueError, match="2 Hugging Face models") as err:
        find_hf_model(TwoModels())
    message = str(err.value)
    assert "student (BertForSequenceClassification)" in message
    assert "teacher (BertForSequenceClassification)" in message and "model_attr=" in message
    assert "\n" not in message


def test_model_attr_resolves_the_ambiguity():
    module = TwoModels()
    path, model = find_hf_model(module, model_attr="teacher")
    assert path == "teacher" and model is module.teacher
    path, model = find_hf_model(module, model_attr="student.bert")  # an inner model, explicitly
    assert model is module.student.bert


def test_none_found_names_what_was_looked_for_and_suggests_model_attr():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)
            self.hidden = [_classifier()]  # a plain list: not registered, not seen

    with pytest.raises(TypeError, match="no Hugging Face model found in Plain") as err:
        find_hf_model(Plain())
    assert "PreTrainedModel" in str(err.value) and "model_attr" in str(err.value)


@pytest.mark.parametrize(
    "attr,error,needle",
    [
        ("missing", ValueError, "no submodule at that path"),
        ("dropout", TypeError, "is a Dropout, not a Hugging Face model"),
        ("", ValueError, "model_attr must be the dotted path"),
        (3, TypeError, "model_attr must be the dotted path"),
    ],
)
def test_bad_model_attr(attr, error, needle):
    with pytest.raises(error, match=needle) as err:
        find_hf_model(AtNet(), model_attr=attr)
    if attr == "missing":
        assert "['net']" in str(err.value)  # names what was found instead


def test_replace_submodule_updates_every_alias_and_inner_alias():
    module = AtNet()
    module.alias = module.net
    module.encoder = module.net.bert
    old = module.net
    new = _classifier(seed=3)
    replaced = replace_submodule(module, "net", new)
    assert replaced == ["alias", "encoder", "net"]
    assert module.net is new and module.alias is new and module.encoder is new.bert
    assert all(p is not q for p in module.parameters() for q in old.parameters())
    assert find_hf_model(module) == ("net", new)


def test_replace_submodule_in_a_module_dict_and_errors():
    module = InModuleDict()
    new = _classifier(seed=4)
    assert replace_submodule(module, "towers.text.0", new) == ["towers.text.0"]
    assert module.towers["text"][0] is new
    with pytest.raises(ValueError, match="no submodule 'towers.nope'"):
        replace_submodule(module, "towers.nope", new)
    with pytest.raises(ValueError, match="the root itself"):
        replace_submodule(module, "", new)
    assert replace_submodule(module, "towers.text.0", new) == ["towers.text.0"]  # same object: a no-op
