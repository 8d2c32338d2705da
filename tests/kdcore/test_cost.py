"""Sizing before running: every model of a job, and what a method adds itself."""

from kdcore.checks.cost import Limits, check_limits
from kdcore.checks.validate import parse_spec
from tests.support.specs import tiny_spec

LIMITS = Limits(
    max_model_params=50_000_000,
    max_activation_bytes=2 * 1024**3,
    max_dataset_bytes=1024**3,
    max_archive_bytes=1024**3,
)


def test_crd_bank_and_negatives_count_against_the_activation_limit():
    modest = parse_spec(tiny_spec(distillation={"method": "crd"}))
    assert check_limits(modest, LIMITS) == []
    # 4096 samples x 65,537 rows x 4,096 floats x 2 banks: terabytes, refused before a run
    greedy = parse_spec(
        tiny_spec(
            distillation={"method": "crd", "crd_negatives": 65536, "crd_feature_dim": 4096},
            training={"batch_size": 4096},
        )
    )
    problems = check_limits(greedy, LIMITS)
    assert [p[0] for p in problems] == ["/training/batch_size"], problems


def test_every_teacher_is_sized():
    spec = tiny_spec(teachers=[{"arch": "small_cnn"}, {"arch": "vgg19", "num_classes": 100_000}])
    del spec["teacher"]
    spec["dataset"]["shape"] = [3, 32, 32]
    problems = check_limits(parse_spec(spec), LIMITS)
    assert any(p[0] == "/teachers/1" and "parameters" in p[1] for p in problems), problems
