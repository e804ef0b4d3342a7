"""Caption scores as MindEye2's evaluation computes them: METEOR, ROUGE-1/L; network similarities only
from a local network (else 'not computed')."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtdecode.evaluate.captions import (
    meteor,
    refined_trials,
    rouge,
    score_captions,
    text_similarity,
    write_captions,
)
from rtdecode.evaluate.collect import Trial
from rtdecode.gallery.captions import painted_caption


def test_rouge_by_hand():
    r1, rl = rouge("a red house", "A red roof, house")
    assert r1 == pytest.approx(2 * 1 * 0.75 / 1.75) and rl == pytest.approx(r1)
    r1, rl = rouge("house red a", "a red house")  # the same words in another order: ROUGE-L sees it
    assert r1 == pytest.approx(1.0) and rl == pytest.approx(1 / 3)
    assert rouge("", "a house") == (0.0, 0.0)


def test_meteor_matches_stems_and_orders():
    exact = meteor("a red house on a hill", "a red house on a hill")
    assert 0.9 < exact < 1.0  # one chunk: the fragmentation penalty is small, not zero
    assert meteor("red houses", "a red house") > meteor("red cars", "a red house") > 0  # 'houses' ~ 'house' by stem
    assert meteor("a blue car", "the green field") == 0.0


def test_scores_per_version_and_what_is_not_computed(tmp_path):
    uid = "d" * 32
    trials = [Trial(1, t, "realtime", f"sim-0100{t}", f"{uid}:1:{t}:realtime", True) for t in range(3)]
    captions = {trials[0].key: painted_caption("sim-01000"), trials[1].key: "a night sky with stars", trials[2].key: ""}
    scores = score_captions(trials, captions, None, tmp_path)
    assert [r["trial"] for r in scores.per_trial] == [0, 1]  # trial 2 has no caption
    assert scores.per_trial[0]["METEOR"] > scores.per_trial[1]["METEOR"]
    assert scores.summary[0]["trials"] == 2 and "Sentence" not in scores.summary[0]
    assert any(n.startswith("Sentence: not computed") for n in scores.notes)
    paths = write_captions(scores, tmp_path / "evaluation")
    text = paths["captions_md"].read_text()
    assert "not computed" in text and "0.248" in text and "not quoted" in text
    # chance: each caption against another trial's reference (trial 0's caption against trial 1's image)
    assert scores.summary[0]["chance METEOR"] < scores.summary[0]["METEOR"]


def test_refined_reconstructions_are_their_own_version(tmp_path):
    uid = "d" * 32
    trials = [Trial(1, t, "realtime", f"sim-0100{t}", f"{uid}:1:{t}:realtime", True) for t in range(2)]
    (tmp_path / "1.png").write_bytes(b"png")
    refined = refined_trials(trials, lambda key: tmp_path / f"{key.split(':')[2]}.png")
    assert [(t.trial, t.version, t.recon) for t in refined] == [(1, "realtime-refined", tmp_path / "1.png")]


def _tiny_sentence_network(folder: Path) -> Path:
    """A tiny BERT with its own vocabulary, saved in Hugging Face layout (safetensors), seeded."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "house", "night", "sky", "with", "stars"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_sentence_similarity_from_a_local_network(tmp_path):
    folder = _tiny_sentence_network(tmp_path / "all-MiniLM-L6-v2")
    sims = text_similarity(folder, ["a red house", "a red house"], ["a red house", "night sky with stars"])
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] < 0.999
    uid = "d" * 32
    trials = [Trial(1, 0, "realtime", "sim-01000", f"{uid}:1:0:realtime", True)]
    scores = score_captions(trials, {trials[0].key: "a red house"}, None, tmp_path)
    assert "Sentence" in scores.per_trial[0] and not any(n.startswith("Sentence") for n in scores.notes)


def test_an_oracle_scores_each_images_own_caption_and_says_so(tmp_path):
    """--oracle: the caption metrics see each image's own reference as the caption (a plumbing check),
    whatever the decoder said; the table is titled as an oracle check, not a result."""
    uid = "e" * 32
    images = ["sim-01003", "sim-01011", "sim-01003"]  # one image shown twice
    trials = [Trial(1, t, "realtime", image, f"{uid}:1:{t}:realtime", True) for t, image in enumerate(images)]
    wrong = {t.key: "a night sky with stars" for t in trials}
    scores = score_captions(trials, wrong, None, None, oracle=True)
    assert [r["caption"] for r in scores.per_trial] == [painted_caption(i) for i in images]
    for row in scores.summary:
        assert row["ROUGE-1"] == row["ROUGE-L"] == 1.0
        ceiling = [meteor(painted_caption(i), painted_caption(i)) for i in sorted(set(images))]
        assert row["METEOR"] == pytest.approx(sum(ceiling) / 2 if row["repeats"] == "averaged" else
                                              (2 * ceiling[0] + ceiling[1]) / 3) and row["METEOR"] > 0.9
    assert any(n.startswith("oracle:") for n in scores.notes)
    md = write_captions(scores, tmp_path, "Oracle check of the caption metrics, sub-01 ses-01 (not a result)")
    assert md["captions_md"].read_text().startswith("# Oracle check of the caption metrics")
    assert score_captions(trials, wrong, None, None).summary[0]["ROUGE-1"] < 0.5  # not the oracle: the captions


def test_captions_averaged_over_an_images_repeats_and_chance_never_its_own_image():
    """averaged: one score per image (the mean of its trials'), then over images; single-trial: over trials.
    Chance pairs a caption with another *image's* reference, never another showing of its own."""
    uid = "f" * 32
    images = ["sim-01000", "sim-01000", "sim-01007"]
    trials = [Trial(1, t, "endofrun", image, f"{uid}:1:{t}:endofrun", True) for t, image in enumerate(images)]
    said = [painted_caption("sim-01000"), "a blue car", "a blue car"]
    scores = score_captions(trials, {t.key: c for t, c in zip(trials, said, strict=True)}, None, None)
    r1 = [rouge(c, painted_caption(i))[0] for c, i in zip(said, images, strict=True)]
    by_way = {r["repeats"]: r for r in scores.summary}
    assert by_way["single-trial"]["ROUGE-1"] == pytest.approx(sum(r1) / 3)
    assert by_way["averaged"]["ROUGE-1"] == pytest.approx(((r1[0] + r1[1]) / 2 + r1[2]) / 2)
    assert by_way["averaged"]["images"] == 2 and by_way["averaged"]["trials"] == 3
    first = scores.per_trial[0]  # its next row shows the same image: chance skips to sim-01007's reference
    assert first["chance ROUGE-L"] == pytest.approx(rouge(said[0], painted_caption("sim-01007"))[1])
    assert first["chance ROUGE-L"] < 1.0
