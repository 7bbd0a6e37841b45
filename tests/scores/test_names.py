import pytest

from lightning_topo.scores.names import MetricName, metric_name, parse_metric_name


@pytest.mark.parametrize(
    "name",
    [
        "topo/psf",
        "topo/psf/std",
        "topo/psf/layer_6",
        "topo/psf/class_1",
        "topo/h0/total_persistence/std",
        "geometry/cone/layer_3/heads",
        "topo/psf/spearman_val_acc",
        "geometry/cone/layer_2/pearson_val_loss",
        "concepts/aligned/sentiment/layer_4",
    ],
)
def test_round_trip(name):
    parsed = parse_metric_name(name)
    assert parsed is not None and str(parsed) == name


def test_parts():
    p = parse_metric_name("geometry/cone/layer_3/heads")
    assert (p.prefix, p.score, p.layer, p.detail) == ("geometry", ("cone",), 3, ("heads",))
    assert str(p.series) == "geometry/cone/heads" and p.family == "geometry/cone"
    c = parse_metric_name("topo/psf/std/spearman_val_acc")
    assert c.std and c.correlation == ("spearman", "val_acc") and str(c.base) == "topo/psf"
    assert parse_metric_name("topo/psf/class_neg").klass == "neg"


def test_prefixes_filter_and_multi_component_prefix():
    assert parse_metric_name("val/acc", prefixes=("topo",)) is None
    p = parse_metric_name("my/lens/psf/layer_2", prefixes=("topo", "my/lens"))
    assert p.prefix == "my/lens" and p.score == ("psf",) and p.layer == 2
    assert parse_metric_name("topo") is None


def test_metric_name_builds_the_grammar():
    assert metric_name("topo", "psf", layer=6) == "topo/psf/layer_6"
    assert metric_name("geometry", "cone", layer=1, detail="heads") == "geometry/cone/layer_1/heads"
    assert metric_name("topo", "h1", "entropy", std=True) == "topo/h1/entropy/std"
    assert str(MetricName("topo", ("psf",), klass="1")) == "topo/psf/class_1"
    with pytest.raises(ValueError, match="prefix and a score"):
        metric_name("topo")
