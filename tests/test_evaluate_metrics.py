"""MindEye2's metrics: PixCorr, SSIM and 2-way identification against independent computations, and each
feature network's plumbing (weights file in its published format, layer, resize, normalisation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torchvision import transforms

from models import registry
from models.features import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    build_network,
)
from rtdecode.evaluate import metrics

TINY_L = {"embed_dim": 24, "quick_gelu": True,
          "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 14},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _images(seed: int, n: int = 5, h: int = 256, w: int = 256) -> torch.Tensor:
    """Smooth random images in [0, 1] (blobs on a gradient), so resizing changes them measurably."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 7, 9, generator=g)
    big = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return (big + 0.15 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def _mindeye2_resize(size: int):
    return transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=False)


def test_pixcorr_and_ssim_match_their_definitions():
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    real, fake = _images(0), _images(1)
    a = _mindeye2_resize(425)(real).reshape(len(real), -1).numpy()
    b = _mindeye2_resize(425)(fake).reshape(len(fake), -1).numpy()
    want_pix = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(metrics.pixcorr(real, fake), want_pix, rtol=1e-6)
    gray_a = rgb2gray(_mindeye2_resize(425)(real).permute(0, 2, 3, 1).numpy())
    gray_b = rgb2gray(_mindeye2_resize(425)(fake).permute(0, 2, 3, 1).numpy())
    want_ssim = [structural_similarity(r, i, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
                 for i, r in zip(gray_a, gray_b, strict=True)]
    np.testing.assert_allclose(metrics.ssim(real, fake), want_ssim, rtol=1e-6)
    # The comparison can tell: at 256 px (no resize to 425) or in colour, SSIM differs.
    at_256 = [structural_similarity(r, i, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
              for i, r in zip(rgb2gray(real.permute(0, 2, 3, 1).numpy()), rgb2gray(fake.permute(0, 2, 3, 1).numpy()),
                              strict=True)]
    assert np.max(np.abs(np.array(at_256) - want_ssim)) > 1e-3


def test_everything_is_brought_to_256_square_first():
    small = _images(2, n=2, h=96, w=128)
    out = metrics.to_256(small)
    assert out.shape == (2, 3, 256, 256)
    want = transforms.Resize((256, 256), interpolation=transforms.InterpolationMode.BILINEAR, antialias=False)(small)
    torch.testing.assert_close(out, want)


def test_two_way_identification_on_a_hand_computed_case_with_ties():
    eye = np.eye(4)
    real = eye  # r(e_i, e_j) = -1/3 off the diagonal
    pred = np.stack([eye[0], eye[2], eye[2] + eye[3], eye[3]])
    # pred 0 beats all 3 others; pred 1 (shows image 2) beats none: -1/3 against -1/3 is a tie, and ties fail;
    # pred 2 (between images 2 and 3) beats images 0 and 1 but ties image 3; pred 3 beats all.
    got = metrics.two_way(real, pred)
    np.testing.assert_allclose(got, [1.0, 0.0, 2 / 3, 1.0])
    # MindEye2's own formula, written out: np.corrcoef, strict <, column sums over n - 1.
    r = np.corrcoef(real, pred)[:4, 4:]
    assert np.mean(np.sum(r < np.diag(r), axis=0)) / 3 == pytest.approx(got.mean())


def test_two_way_never_compares_a_repeated_image_with_itself():
    """Perfect reconstructions of 6 images shown twice: 1.0, as MindEye2's one-row-per-image pool gives.
    Pooling every trial (each image's second showing an exact tie, and ties fail) gave 10/11 = .909."""
    rng = np.random.default_rng(4)
    real = rng.normal(size=(6, 23))
    owner = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(metrics.two_way(real, real[owner], owner), np.ones(12))
    assert metrics.two_way(real[owner], real[owner]).mean() == pytest.approx(10 / 11)  # the old pooling


def test_correlation_distance_is_scipys():
    from scipy.spatial.distance import correlation

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 37)), rng.normal(size=(4, 37))
    np.testing.assert_allclose(metrics.correlation_distance(a, b), [correlation(x, y) for x, y in zip(a, b, strict=True)])


# -- the feature networks -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random-weight networks built by the published constructors, saved as their published files are."""
    import open_clip

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    nets = {"alexnet": tvm.alexnet(), "inception-v3": tvm.inception_v3(aux_logits=True, init_weights=True),
            "efficientnet-b1": tvm.efficientnet_b1(), "swav-resnet50": tvm.resnet50()}
    for name, net in nets.items():
        _settle_batchnorm(net)
        path = registry.local_path(name, folder)
        state = net.state_dict()
        if name == "swav-resnet50":  # SwAV's layout: DataParallel prefix, its heads, no fc
            state = {f"module.{k}": v for k, v in state.items() if not k.startswith("fc.")}
            state["module.projection_head.0.weight"] = torch.randn(2048, 2048)
            state["module.prototypes.weight"] = torch.randn(3000, 128)
        torch.save(state, path)
    config = folder / "rtd-tiny-vit-l.json"
    config.write_text(json.dumps(TINY_L))
    open_clip.add_model_config(str(config))
    clip = open_clip.create_model("rtd-tiny-vit-l")
    path = registry.local_path("clip-vit-l-14", folder)
    path.parent.mkdir(parents=True)
    torch.save(clip.state_dict(), path)
    return folder, nets, clip, config


def _settle_batchnorm(net: torch.nn.Module) -> None:
    """BatchNorm statistics recomputed from one pass over normalised images (dropout and stochastic depth
    off): with the initial ones (mean 0, variance 1) EfficientNet's random features are about 1e-13, below
    any tolerance, and its test could not fail."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative: the statistics of this pass
    net.eval()  # dropout and stochastic depth off: only BatchNorm learns its statistics
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        net(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(_images(9, n=8, h=299, w=299)))
    net.eval()


def _hook(module: torch.nn.Module):
    got = []
    handle = module.register_forward_hook(lambda m, i, o: got.append(o))
    return handle, got


@torch.no_grad()
def test_each_network_reads_its_layer_after_its_resize_and_normalisation(weights):
    folder, nets, clip, config = weights
    x = _images(3, n=3)

    def prep(size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        return transforms.Normalize(mean, std)(_mindeye2_resize(size)(x))

    alex = FeatureExtractor("alexnet", build_network("alexnet", registry.local_path("alexnet", folder)))(x)
    net = nets["alexnet"].eval()
    np.testing.assert_allclose(alex["AlexNet(2)"], net.features[:5](prep(256)).flatten(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alex["AlexNet(5)"], net.features[:12](prep(256)).flatten(1).numpy(), rtol=1e-5, atol=1e-6)

    # InceptionV3 as inception_v3(weights=...) builds it: the input re-normalised inside (transform_input).
    inc = FeatureExtractor("inception-v3", build_network("inception-v3", registry.local_path("inception-v3", folder)))(x)
    ref = tvm.inception_v3(aux_logits=True, transform_input=True, init_weights=False)
    ref.load_state_dict(nets["inception-v3"].state_dict())
    handle, got = _hook(ref.eval().avgpool)
    ref(prep(342))
    handle.remove()
    np.testing.assert_allclose(inc["InceptionV3"], got[0].flatten(1).numpy(), rtol=1e-4, atol=1e-5)

    eff = FeatureExtractor("efficientnet-b1", build_network("efficientnet-b1", registry.local_path("efficientnet-b1", folder)))(x)
    net = nets["efficientnet-b1"].eval()
    np.testing.assert_allclose(eff["EffNet-B"], net.avgpool(net.features(prep(255))).flatten(1).numpy(), rtol=1e-4, atol=1e-5)

    swav = FeatureExtractor("swav-resnet50", build_network("swav-resnet50", registry.local_path("swav-resnet50", folder)))(x)
    net = nets["swav-resnet50"].eval()
    handle, got = _hook(net.avgpool)
    net(prep(224))
    handle.remove()
    np.testing.assert_allclose(swav["SwAV"], got[0].flatten(1).numpy(), rtol=1e-4, atol=1e-5)

    clip_net = build_network("clip-vit-l-14", registry.local_path("clip-vit-l-14", folder), config_path=config)
    feats = FeatureExtractor("clip-vit-l-14", clip_net)(x)
    want = clip.eval().encode_image(prep(224, CLIP_MEAN, CLIP_STD)).numpy()
    np.testing.assert_allclose(feats["CLIP"], want, rtol=1e-4, atol=1e-5)

    # The comparisons can fail: every network's features are far above the tolerances and depend on the image.
    for name, f in (("AlexNet(2)", alex["AlexNet(2)"]), ("InceptionV3", inc["InceptionV3"]), ("EffNet-B", eff["EffNet-B"]),
                    ("SwAV", swav["SwAV"]), ("CLIP", feats["CLIP"])):
        assert np.abs(f).mean() > 1e-2, name
        assert np.abs(f[0] - f[1]).mean() > 1e-3 * np.abs(f).mean(), name


def test_a_weights_file_of_another_network_is_refused_by_name(weights, tmp_path):
    folder, nets, _, _ = weights
    wrong = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(nets["efficientnet-b1"].state_dict(), wrong)
    with pytest.raises(ValueError, match="alexnet-owt-7be5be79.pth: not the expected weights"):
        build_network("alexnet", wrong)
    swav = torch.load(registry.local_path("swav-resnet50", folder), weights_only=True)
    del swav["module.layer4.2.conv3.weight"]
    torch.save(swav, tmp_path / "swav.pth.tar")
    with pytest.raises(ValueError, match="1 keys missing.*layer4.2.conv3.weight"):
        build_network("swav-resnet50", tmp_path / "swav.pth.tar")
    with pytest.raises(FileNotFoundError, match="weights file missing"):
        build_network("alexnet", tmp_path / "absent.pth")
