"""The README's Python examples, run as they are written: top to bottom in one namespace, as a
reader pastes them, against stand-ins for what this machine lacks (a tiny model under the
flagship's name with its checkpoint on a loopback hub, tfds' mock data, one epoch)."""

import functools
import pathlib
import re

import numpy as np
import pytest
from conftest import serve
from PIL import Image

import keras_convmixer

tfds = pytest.importorskip("tensorflow_datasets")

README = pathlib.Path(__file__).parent.parent / "README.md"
ONE_EPOCH = {"epochs=25": "epochs=1", "epochs=150": "epochs=1"}


def readme_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_examples_run(hub, tmp_path, monkeypatch):
    examples = readme_examples()
    assert len(examples) == 7, "README examples added or removed: update this test"
    for text in ONE_EPOCH:
        assert text in "".join(examples), f"README no longer says {text!r}: update ONE_EPOCH"
    flagship = functools.partial(keras_convmixer.ConvMixer, 16, 2, 3, 7)  # hub's tiny variant
    monkeypatch.setattr(keras_convmixer, "ConvMixer1536_20", flagship)
    monkeypatch.setattr(keras_convmixer, "ConvMixer256_8", functools.partial(flagship, classes=10))
    monkeypatch.chdir(tmp_path)
    photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(photo).save("cat.jpg")
    namespace = {"images": np.zeros((2, 64, 64, 3), "float32")}  # the features example's input

    with serve(hub["root"]) as endpoint, tfds.testing.mock_data(num_examples=512):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        for number, example in enumerate(examples):
            for text, shorter in ONE_EPOCH.items():
                example = example.replace(text, shorter)
            exec(compile(example, f"README example {number}", "exec"), namespace)

    import torch

    image = keras_convmixer.preprocess_input(namespace["image"][None])  # the photo, as timm's
    with torch.no_grad():
        logits = hub["reference"](torch.from_numpy(image.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(namespace["probs"], torch.softmax(logits, -1).numpy(), atol=1e-6)
    outputs = namespace["outputs"]
    assert sorted(outputs) == ["block_0", "block_1", "stem"]  # torch returns them sorted
    assert namespace["steps"] == 512 // 64
    assert (tmp_path / "runs" / "c10" / "log.csv").exists()
    assert (tmp_path / "runs" / "staged" / "model.keras").exists()  # the model behind uint8
