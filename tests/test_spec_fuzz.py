"""Random YAML at the spec loader: a valid spec or a SpecError naming the file, never anything else."""

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import SpecError
from suite.families import CHECKS
from suite.spec import HypothesisSpec, load_spec_file

from .helpers import PANELS

# the loader's own vocabulary, so random documents get deep into validation, not just the top key
WORDS = ["schema_version", "panels", "hypotheses", "definitions", "id", "claim", "probe", "axes", "params",
         "pass_rule", "expected", "where", "verdict", "reason", "tolerance", "model", "pathway", "model_pair",
         "all", "cross_line", "ribosome", "decoy", "pass", "fail", "exploratory", "p_below", "effect_above",
         "n_permutations", "seed", "null_model", "effect", "value", "p", *CHECKS]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10_000), st.floats(allow_nan=True),
                    st.sampled_from(WORDS), st.text(max_size=8), st.just(str(PANELS)), st.just(1))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(WORDS), inner, max_size=6)), max_leaves=30)


def _mostly(good, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` four times in five, so random files get past the first check and deep into the rest."""
    return st.one_of(st.just(good), st.just(good), st.just(good), st.just(good), bad)


def _hypothesis_like() -> st.SearchStrategy:
    """Near-valid files: a real skeleton with random values swapped in."""
    entry = st.fixed_dictionaries({"id": _mostly("h-1", scalars), "claim": _mostly("a claim", scalars),
                                   "probe": st.one_of(st.sampled_from(list(CHECKS)), scalars),
                                   "axes": _mostly({"model": "all", "pathway": "all"}, documents)},
                                  optional={"params": st.dictionaries(st.sampled_from(WORDS), scalars, max_size=3),
                                            "pass_rule": documents, "expected": documents, "tolerance": documents})
    return st.fixed_dictionaries({"schema_version": _mostly(1, scalars), "panels": _mostly([str(PANELS)], documents),
                                  "hypotheses": st.one_of(st.lists(entry, min_size=1, max_size=2), documents)})


def _load(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            specs = load_spec_file(path)
        except SpecError as error:
            assert str(path) in str(error)
        else:
            assert all(isinstance(s, HypothesisSpec) for s in specs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, _hypothesis_like()))
def test_random_documents_give_a_spec_or_a_spec_error(document):
    _load(yaml.safe_dump(document, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{},'\"&*!|>#\n \t1.")), max_size=60))
def test_random_text_gives_a_spec_or_a_spec_error(text):
    _load(text)
