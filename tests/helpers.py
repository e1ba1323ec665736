"""Paths and small helpers shared by the suite's own tests."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "demo"
PANELS = ROOT / "hypotheses" / "panels" / "demo_pathways.yaml"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")   # Debian's, `make browser`
# without the background-networking flags Chromium keeps dialling out, refused, on a closed network
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


def chromium_driver(user_data_dir: Path):
    """Selenium driving Debian's headless Chromium, with the page's console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def tiny_state_model(backbone: str, hidden: int = 16, genes: int = 12, perts: int = 5, cells: int = 8, seed: int = 0):
    """An untrained arc-state StateTransitionPerturbationModel with a GPT2 or Llama backbone."""
    import contextlib
    import io

    import torch
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    if backbone == "GPT2":
        kwargs = dict(n_embd=hidden, n_layer=2, n_head=2, n_positions=cells, vocab_size=4)
    else:
        kwargs = dict(bidirectional_attention=True, max_position_embeddings=cells, hidden_size=hidden,
                      intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=hidden // 2, use_cache=False, vocab_size=4)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model = StateTransitionPerturbationModel(
            input_dim=genes, hidden_dim=hidden, output_dim=genes, pert_dim=perts, gene_dim=genes, embed_key="X_hvg",
            output_space="gene", transformer_backbone_key=backbone, transformer_backbone_kwargs=kwargs,
            cell_set_len=cells, n_encoder_layers=2, n_decoder_layers=2, predict_residual=True)
    return model.eval()
