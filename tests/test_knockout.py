"""In-silico knockouts: rows against plain forward passes, precomputed matrices, per-gene Spearman."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from core.errors import ModelLoadError
from probes.forward import arc_state_forward
from probes.knockout import knockout_matrix, load_knockout_matrix
from suite.checks.knockout import knockouts, per_gene_spearman
from suite.session import RunContext

N_GENES = 234          # the demo models' output genes (their HVGs)


def test_one_ko_row_equals_a_single_forward_with_the_gene_zeroed(demo_run):
    model = demo_run.model("hepg2_fewshot")
    cells = model.cells[:32]
    onehot = model.pert_onehots[model.pert_index("MYC")]
    with torch.no_grad():
        rep = model.module.pert_encoder(onehot[None])[0]
    genes = [0, 17, 42, 199]
    rows = knockout_matrix(model.module, cells, rep, genes, torch.arange(32)[None], chunk_size=3)
    knocked = cells.clone()
    knocked[:, 42] = 0.0
    with torch.no_grad():
        plain = arc_state_forward(model.module, knocked, onehot).mean(0) - arc_state_forward(model.module, cells,
                                                                                              onehot).mean(0)
    assert np.allclose(rows[2], plain.double().numpy(), atol=1e-5)


def test_per_gene_spearman_leaves_the_own_output_out():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
    a[1, 4], b[1, 4] = 100.0, 100.0                           # a shared huge self effect
    r = per_gene_spearman(a, b, [-1, 4, 2])
    assert r[1] == pytest.approx(spearmanr(np.delete(a[1], 4), np.delete(b[1], 4)).statistic)
    assert r[0] == pytest.approx(spearmanr(a[0], b[0]).statistic)


def test_precomputed_matrices_are_checked(tmp_path):
    genes = ("A", "B", "C", "D")
    (tmp_path / "genes.txt").write_text("A\nC\n")
    np.save(tmp_path / "ok.npy", np.ones((2, 4)))
    matrix, rows = load_knockout_matrix(tmp_path / "ok.npy", tmp_path / "genes.txt", genes)
    assert matrix.shape == (2, 4) and rows == ["A", "C"]
    np.save(tmp_path / "wide.npy", np.ones((2, 5)))
    with pytest.raises(ModelLoadError, match=r"shape \(2, 5\).*must be \[2, 4\]"):
        load_knockout_matrix(tmp_path / "wide.npy", tmp_path / "genes.txt", genes)
    (tmp_path / "typo.txt").write_text("A\nCC\n")
    with pytest.raises(ModelLoadError, match="'CC'.*did you mean 'C'"):
        load_knockout_matrix(tmp_path / "ok.npy", tmp_path / "typo.txt", genes)


def test_registry_precomputed_matrix_is_used_instead_of_the_model(demo_registry, tmp_path):
    from fixtures.registry import KnockoutEntry

    entry = demo_registry["jurkat_fewshot"]
    (tmp_path / "genes.txt").write_text("RPL3\nMYC\n")
    np.save(tmp_path / "ko.npy", np.arange(2.0 * N_GENES).reshape(2, N_GENES))
    registry = {"j": replace(entry, name="j", knockout=KnockoutEntry(str(tmp_path / "ko.npy"),
                                                                      str(tmp_path / "genes.txt")))}
    matrix, rows, source = knockouts(RunContext(registry, torch.device("cpu")), "j", ("X",), "non-targeting", 32, 0, 1)
    assert rows == ("RPL3", "MYC") and matrix[1, 0] == N_GENES and source.startswith("precomputed")


def test_a_reinitialised_copy_computes_its_knockouts_instead_of_reading_the_trained_models_file(demo_registry,
                                                                                               tmp_path):
    from fixtures.registry import KnockoutEntry
    from suite.session import reinitialised_name

    entry = demo_registry["jurkat_fewshot"]
    (tmp_path / "genes.txt").write_text("RPL3\nMYC\n")
    np.save(tmp_path / "ko.npy", np.arange(2.0 * N_GENES).reshape(2, N_GENES))
    registry = {"j": replace(entry, name="j", knockout=KnockoutEntry(str(tmp_path / "ko.npy"),
                                                                      str(tmp_path / "genes.txt")))}
    ctx = RunContext(registry, torch.device("cpu"))
    matrix, rows, source = knockouts(ctx, reinitialised_name("j", 0), ("RPL3", "MYC"), "non-targeting", 32, 0, 1)
    assert rows == ("RPL3", "MYC") and source.startswith("predicted")
    assert matrix.shape == (2, N_GENES) and not np.array_equal(matrix, np.arange(2.0 * N_GENES).reshape(2, N_GENES))


def _planted_ko(tmp_path, model, seed=0):
    """A precomputed KO matrix over 60 of the model's genes: 20 'uninformative' genes whose profiles
    are the common KO response (one direction, varied size, small noise), 8 'program' genes sharing a
    direction of their own, the rest private directions; sizes alike throughout."""
    rng = np.random.default_rng(seed)
    genes = list(model.gene_names[:60])
    generic, program = rng.normal(size=N_GENES), rng.normal(size=N_GENES)
    ko = rng.normal(size=(60, N_GENES))
    ko[:20] = generic + 0.4 * rng.normal(size=(20, N_GENES))
    ko[20:28] = program + 0.9 * rng.normal(size=(8, N_GENES))
    ko *= rng.uniform(0.5, 2.0, (60, 1)) / np.linalg.norm(ko, axis=1, keepdims=True)
    np.save(tmp_path / "ko.npy", ko)
    (tmp_path / "genes.txt").write_text("\n".join(genes) + "\n")
    return ko, genes


@pytest.mark.parametrize("null_match, trap_verdict", [("ko_norm", "pass"), ("genericness", "fail")])
def test_ko_coherence_of_genes_the_model_reads_alike_is_not_a_pass(demo_registry, tmp_path, write, null_match,
                                                                   trap_verdict):
    """Genes whose KO profiles are the model's common response look coherent under KO-norm strata (the
    old default passes them); strata of genericness do not, and a real shared program still passes."""
    from fixtures.registry import KnockoutEntry
    from suite.cases import Case
    from suite.checks.knockout import coherence
    from suite.spec import load_spec_file
    from suite.stats import cosine_similarity_matrix
    from suite.verdicts import decide

    entry = demo_registry["jurkat_fewshot"]
    registry = {"j": replace(entry, name="j", knockout=KnockoutEntry(str(tmp_path / "ko.npy"),
                                                                      str(tmp_path / "genes.txt")))}
    ctx = RunContext(registry, torch.device("cpu"))
    ko, genes = _planted_ko(tmp_path, ctx.model("j"))
    panels = write("panels.yaml", f"""
        schema_version: 1
        pathways:
          uninformative: {{genes: [{", ".join(genes[2:10])}]}}
          program: {{genes: [{", ".join(genes[20:28])}]}}
        """)
    (spec,) = load_spec_file(write("ko.yaml", f"""
        schema_version: 1
        panels: [{panels}]
        hypotheses:
          - id: ko
            claim: c
            probe: knockout_coherence
            axes: {{model: all, pathway: all}}
            params: {{null_match: {null_match}, n_permutations: 999, n_bootstrap: 500, exclude_self: false}}
        """))
    found = {}
    for pathway in ("uninformative", "program"):
        evidence = coherence(Case(f"ko-j-{pathway}", spec, {"model": "j", "pathway": pathway}, None), ctx)
        found[pathway] = decide(evidence, spec.pass_rule)[0]
        members = list(range(2, 10)) if pathway == "uninformative" else list(range(20, 28))
        sim = cosine_similarity_matrix(ko)                # the effect by hand: mean member pair - mean pair
        within = sim[np.ix_(members, members)][np.triu_indices(8, 1)].mean()
        assert evidence.effect == pytest.approx(within - sim[np.triu_indices(60, 1)].mean(), abs=1e-9)
        assert evidence.ci[0] <= evidence.effect <= evidence.ci[1]
    assert found == {"uninformative": trap_verdict, "program": "pass"}
