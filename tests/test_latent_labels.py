"""ImageNet labels by id and name (robuq.labels), the linear latent preview and VAE decoding (robuq.latent),
and robuq-infer on a latent ImageNet-shaped model with and without --vae."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import robuq
from robuq import infer, labels, latent
from robuq.engine import to_uint8
from robuq.exporter.cli import main as export_main

# --------------------------------------------------------------------------------------------- labels
KNOWN = {
    207: "golden retriever",
    360: "otter",
    387: "lesser panda",
    974: "geyser",
    88: "macaw",
    279: "Arctic fox",
}


def test_imagenet_table_known_ids():
    names = labels.imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000  # one unique name per class
    for i, name in KNOWN.items():
        assert names[i] == name
        assert labels.class_name(i) == name
        assert labels.resolve_class(name, 1000) == i
        assert labels.resolve_class(str(i), 1000) == i
    # first and last classes (the sorted WordNet ids n01440764 tench .. n15075141 toilet tissue)
    assert names[0] == "tench" and names[999] == "toilet tissue"


@pytest.mark.parametrize(
    "text, want",
    [
        ("Golden Retriever", 207),
        ("golden_retriever", 207),
        ("  golden   retriever ", 207),
        ("ARCTIC-FOX", 279),
        ("flat-coated retriever", 205),
        ("crane", 517),
        ("crane bird", 134),
        (" 88 ", 88),
        (999, 999),
    ],
)
def test_resolve_names_normalised(text, want):
    assert labels.resolve_class(text, 1000) == want


@pytest.mark.parametrize(
    "token, k, pattern",
    [
        (
            "retriever",
            1000,
            r"unknown ImageNet class name 'retriever'; did you mean .*207 'golden retriever'",
        ),
        ("goldn retriever", 1000, r"did you mean 207 'golden retriever'"),
        ("1000", 1000, r"class id 1000 is out of range: this model has classes 0..999"),
        ("-1", 1000, r"class id -1 is out of range"),
        ("otter", 10, r"names are known only for ImageNet models \(1000 classes\), this model has 10"),
        ("", 1000, r"empty class"),
        (True, 1000, r"neither an id nor a name"),
    ],
)
def test_resolve_errors(token, k, pattern):
    with pytest.raises(labels.LabelError, match=pattern):
        labels.resolve_class(token, k)


def test_synonyms_and_wordnet_ids():
    """diffusers' example names (its DiTPipeline.get_label_ids takes every synonym of the ILSVRC table) and
    WordNet ids resolve; a synonym of several classes is refused unless it is one class's short name."""
    syn = labels.imagenet_synsets()
    names = labels.imagenet_classes()
    assert syn[0] == ("n01440764", ("tench", "Tinca tinca")) and syn[999][0] == "n15075141"
    # the short names are the synsets' first lemma, made unique in two places
    differ = {i: (names[i], syn[i][1][0]) for i in range(1000) if names[i] != syn[i][1][0]}
    assert differ == {134: ("crane bird", "crane"), 639: ("maillot tank suit", "maillot")}
    for text, want in [
        ("white shark", 2),
        ("umbrella", 879),
        ("red panda", 387),
        ("tabby cat", 281),
        ("Carcharodon carcharias", 2),
        ("n02099601", 207),
        ("N01440764", 0),
        ("crane", 517),  # the short name of 517, a synonym of 134 too
        ("maillot", 638),
    ]:
        assert labels.resolve_class(text, 1000) == want, text
    with pytest.raises(labels.LabelError, match=r"'panda' is ambiguous: it names 387 'lesser panda', 388"):
        labels.resolve_class("panda", 1000)
    with pytest.raises(labels.LabelError, match=r"unknown WordNet id 'n00000001'"):
        labels.resolve_class("n00000001", 1000)
    with pytest.raises(labels.LabelError, match="names are known only for ImageNet"):
        labels.resolve_class("n02099601", 10)


def test_class_name_only_for_imagenet_models():
    assert labels.class_name(3, 10) is None and labels.class_name(3, 1000) == labels.imagenet_classes()[3]


# -------------------------------------------------------------------------------------------- preview
def test_preview_is_the_linear_map():
    z = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
    rgb = np.einsum("nchw,cr->nrhw", z.astype(np.float64), latent.PREVIEW_RGB.astype(np.float64))
    want = np.rint((np.clip(rgb, -1, 1) + 1) * 127.5).transpose(0, 2, 3, 1)
    got = latent.preview(z)
    assert got.dtype == np.uint8 and got.shape == (2, 5, 3, 3)
    # float32 einsum vs float64: a value may land on the other side of a rounding boundary (<= 1 level)
    assert np.abs(got.astype(int) - want).max() <= 1
    with pytest.raises(latent.VaeError, match=r"needs SD-VAE latents \[n, 4, h, w\]"):
        latent.preview(np.zeros((1, 3, 4, 4), np.float32))


# ------------------------------------------------------------------------------------------------ VAE
def _tiny_vae(folder, latent_channels=4):
    """A randomly initialised AutoencoderKL in diffusers layout: 2 blocks (latents at 1/2 the side; the SD
    VAE has 4 blocks and 1/8), saved with save_pretrained as a downloaded SD VAE folder is."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    )
    vae.save_pretrained(str(folder))
    return vae.eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    d = tmp_path_factory.mktemp("vae")
    vae = _tiny_vae(d)
    return d, vae


def test_vae_decode_matches_diffusers(vae_dir):
    d, ref = vae_dir
    vae = latent.load_vae(d)
    z = np.random.default_rng(1).standard_normal((3, 4, 8, 8)).astype(np.float32)
    got = latent.decode(vae, z, batch_size=2)
    with torch.inference_mode():
        x = ref.decode(torch.from_numpy(z) / 0.18215).sample.numpy()
    assert got.shape == (3, 16, 16, 3) and got.dtype == np.uint8
    # same module, same float32 input: batching (2 + 1 vs 3) may change convolution blocking, so allow one
    # rounding level
    assert np.abs(got.astype(int) - to_uint8(x).astype(int)).max() <= 1


def test_vae_errors(tmp_path):
    with pytest.raises(latent.VaeError, match="not found.*nothing is downloaded"):
        latent.load_vae(tmp_path / "absent")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(latent.VaeError, match="is not a folder"):
        latent.load_vae(f)
    with pytest.raises(latent.VaeError, match="has no config.json"):
        latent.load_vae(tmp_path)
    pytest.importorskip("diffusers")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(latent.VaeError, match="cannot load the VAE from"):
        latent.load_vae(bad)  # config without weights
    three = tmp_path / "three"
    _tiny_vae(three, latent_channels=3)
    with pytest.raises(latent.VaeError, match="3 latent channels, not 4"):
        latent.load_vae(three)


# ----------------------------------------------------------------------------------------- robuq-infer
@pytest.fixture(scope="module")
def in1k(tmp_path_factory):
    """A random-weight latent model with ImageNet's 1000 classes (1 block, hidden 96, 8x8x4 latents)."""
    path = tmp_path_factory.mktemp("in1k") / "in1k.rq"
    argv = [
        "--random",
        "DiT-S/2",
        "--depth",
        "1",
        "--hidden-size",
        "96",
        "--num-heads",
        "3",
        "--input-size",
        "8",
        "--in-channels",
        "4",
        "--num-classes",
        "1000",
        "--bits",
        "W1.58A3",
        "-q",
        "-o",
        str(path),
    ]
    assert export_main(argv) == 0
    return str(path)


FAST = ("--steps", "3", "--threads", "1", "--no-progress")


def run_infer(capsys, *argv):
    rc = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_infer_classes_by_name_and_id(in1k, tmp_path, capsys):
    rc, out, err = run_infer(
        capsys, in1k, "--class", "golden retriever", "--class", "otter,88", *FAST, "-o", tmp_path / "a.npy"
    )
    assert rc == 0, err
    assert "207 golden retriever, 360 otter, 88 macaw" in out
    rc, _, err = run_infer(
        capsys, in1k, "--class", "207,360", "--class", "88", *FAST, "-o", tmp_path / "b.npy"
    )
    assert rc == 0, err
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    rc, _, err = run_infer(capsys, in1k, "--class", "golden retrievr", *FAST, "-o", tmp_path / "c.npy")
    assert rc == 2 and "did you mean 207 'golden retriever'" in err
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "a.png", "b.npy", "b.png"]  # latents + previews


def test_infer_with_vae(in1k, vae_dir, tmp_path, capsys):
    d, _ = vae_dir
    rc, out, err = run_infer(
        capsys, in1k, "--class", "207", "--class", "974", *FAST, "--vae", d, "-o", tmp_path / "img.npy"
    )
    assert rc == 0, err
    assert "decoded by the VAE" in out
    imgs = np.load(tmp_path / "img.npy")
    z = robuq.Engine(in1k, threads=1).sample([207, 974], steps=3, output="latent")
    assert np.array_equal(imgs, latent.decode(latent.load_vae(d), z))
    assert imgs.shape == (2, 16, 16, 3) and os.listdir(tmp_path) == ["img.npy"]
    rc, out, err = run_infer(
        capsys, in1k, "--class", "207", *FAST, "--vae", d, "--zoom", "2", "-o", tmp_path / "img.png"
    )
    assert rc == 0, err
    png = np.asarray(Image.open(tmp_path / "img.png"))
    assert png.shape == (32, 32, 3) and np.array_equal(png[::2, ::2], imgs[0])


def test_infer_vae_errors_leave_no_file(in1k, tiny, tmp_path, capsys):
    rc, _, err = run_infer(
        capsys, in1k, "--class", "1", *FAST, "--vae", tmp_path / "novae", "-o", tmp_path / "x.png"
    )
    assert rc == 2 and "VAE folder" in err and "not found" in err
    rc, _, err = run_infer(
        capsys, tiny("a2").rq, "--class", "1", *FAST, "--vae", tmp_path, "-o", tmp_path / "x.png"
    )
    assert rc == 2 and "pixel-space model" in err
    assert os.listdir(tmp_path) == []
