"""The `keras-convmixer` command line.

`--backend` sets `KERAS_BACKEND` for every subcommand; when Keras was already imported with
another backend (importing this package imports it), the command restarts itself with the
variable set. Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import os
import sys
import urllib.parse
import warnings
from importlib import resources

BACKENDS = ("tensorflow", "jax", "torch")
MODEL_HELP = (
    "convmixer_1536_20, convmixer_768_32, convmixer_1024_20, convmixer_256_8, or any "
    "convmixer_DIM_DEPTH[_kKERNEL][_pPATCH][_relu]"
)
HUB = "hf://OWNER/REPO[@REV][/FILE]"
# What a command needs that the package does not install with every backend, by module.
INSTALL_HINTS = {
    "tensorflow": "tf.data input pipelines and SavedModel export need TensorFlow on every "
    "backend: pip install tensorflow-cpu (tensorflow on a GPU machine)",
    "tensorflow_datasets": "--tfds needs TensorFlow Datasets: pip install tensorflow-datasets",
    "timm": "--compare-timm needs timm: pip install timm",
    "torch": "PyTorch checkpoints (.pth, .bin) and --compare-timm need PyTorch: pip install torch",
}
MODES_DISTRIBUTE = ("auto", "none", "mirrored", "multi-worker", "data-parallel")


class UserError(Exception):
    """An error of the user's making: printed as one line, no traceback."""


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    return path


def at_least(minimum: int):
    """An argparse type: an integer ≥ `minimum`; argparse's error names the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {minimum}; received {text!r}")
        return value

    return parse


def installed_backends() -> tuple[str, ...]:
    """The Keras backends whose framework is installed (each backend is named after its
    module)."""
    import importlib.util

    return tuple(b for b in BACKENDS if importlib.util.find_spec(b) is not None)


def model_help(otherwise: str) -> str:
    """--model's help: the names, and the default from the checkpoint's config.json."""
    return f"{MODEL_HELP}; default: the architecture that config.json names, {otherwise}"


def blocks_or_all(text: str) -> int | str:
    """An argparse type: 'all' or an integer ≥ 0."""
    if text == "all":
        return text
    try:
        return at_least(0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'all' or an integer ≥ 0; received {text!r}"
        ) from None


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0; received {text!r}")
    return value


def build_model(
    name: str, weights: str | None, classes: int | None = None, fine_tune: bool = False, **kwargs
):
    """The named variant with `weights` ("imagenet", a hub address, a path, or None) and
    `classes` classes, by default the checkpoint's. A checkpoint of another class count is
    refused; with `fine_tune` (train) its backbone loads under a new classifier, a bare file's
    classifier counting as the variant's (timm's assumption)."""
    from keras_convmixer import pretrained
    from keras_convmixer.model import create_model, variant_from_name

    if weights not in (None, "imagenet") and not pretrained.is_hub_address(weights):
        _existing_file(pretrained.local_weights_file(weights))
    theirs = pretrained.published_classes(weights)
    if classes is not None and theirs not in (None, classes) and not fine_tune:
        source = "the ImageNet weights classify" if weights == "imagenet" else f"{weights} has"
        raise UserError(f"{source} {theirs} classes, not {classes}")
    keras_file = str(weights).lower().endswith(pretrained.KERAS_SUFFIXES)
    bare = theirs is None and weights is not None and not keras_file
    if fine_tune and bare and classes not in (None, variant_from_name(name).classes):
        # The library loads a bare file whole; its classifier counts as the variant's.
        model = create_model(name, classes=classes, **kwargs)
        pretrained.load_weights(model, weights, include_top=False)
        return model
    return create_model(name, weights=weights, classes=classes, **kwargs)


def read_image(path: str):
    """An RGB uint8 array from an image file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    _existing_file(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None


# What PIL reads for predict (tf.data's decoding, for training, takes fewer: data.IMAGE_SUFFIXES).
PIL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_paths(items: list[str]) -> list[str]:
    """Image files as given, a folder's image files (sorted) in its place; each must exist."""
    paths = []
    for item in items:
        if not os.path.isdir(item):
            paths.append(_existing_file(item))
            continue
        found = sorted(
            os.path.join(item, name)
            for name in os.listdir(item)
            if name.lower().endswith(PIL_SUFFIXES)
        )
        if not found:
            raise UserError(f"no image files ({', '.join(PIL_SUFFIXES)}) in {item}")
        paths += found
    return paths


def sample_image_path() -> str:
    """A CC0 photo of a tabby cat (scikit-image's `chelsea.png`) bundled with the package."""
    return str(resources.files("keras_convmixer").joinpath("sample_cat.png"))


def cmd_predict(args) -> int:
    """Top classes of each image: ImageNet's for 1000 outputs, else the `--classes-file` names
    (for a `.keras` model, the `classes.json` that `train` wrote beside it)."""
    import numpy as np

    from keras_convmixer.imagenet import decode_predictions, eval_transform, preprocess_input

    recipe = recipe_from_args(args)
    paths = image_paths(args.images) or [sample_image_path()]

    def inputs(chunk):
        size, crop = recipe.image_size, recipe.crop_pct
        images = np.stack([eval_transform(read_image(p), size, crop) for p in chunk])
        return preprocess_input(images, "channels_last", mean=recipe.mean, std=recipe.std)

    chunks = [paths[i : i + args.batch] for i in range(0, len(paths), args.batch)]
    first = inputs(chunks[0])  # an unreadable image is found before the model loads
    model = saved_model(args.weights)
    if model is None:
        model = build_model(model_name(args, "convmixer_1536_20"), args.weights, args.classes)
    batches = itertools.chain([first], map(inputs, chunks[1:]))
    probs = np.concatenate([np.asarray(model.predict(x, verbose=0)) for x in batches])
    names = _read_classes(args)
    if names is not None and len(names) != probs.shape[-1]:
        raise UserError(f"{len(names)} class names for a model of {probs.shape[-1]} classes")
    if names is None and probs.shape[-1] == 1000:
        rows = [
            [{"wnid": w, "label": label, "score": round(s, 6)} for w, label, s in row]
            for row in decode_predictions(probs, top=args.top)
        ]
    else:
        names = names or [f"class {i}" for i in range(probs.shape[-1])]
        top = np.argsort(-probs, axis=-1, kind="stable")[:, : args.top]
        rows = [
            [{"label": names[i], "score": round(float(p[i]), 6)} for i in order]
            for p, order in zip(probs, top, strict=True)
        ]
    results = dict(zip(paths, rows, strict=True))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for path, found in results.items():
        print(f"{os.path.basename(path)}  ({model.name}, {args.weights})")
        for rank, row in enumerate(found, 1):
            wnid = f"{row['wnid']}  " if "wnid" in row else ""
            print(f"  {rank}. {row['label']:<28} {wnid}{row['score']:7.2%}")
    return 0


def saved_model(path: str | None):
    """The model saved in a `.keras` file, or None when `path` names anything else."""
    if not (path and path.endswith(".keras")):
        return None
    import keras

    return keras.models.load_model(_existing_file(path))


def cmd_convert(args) -> int:
    """timm/PyTorch checkpoint → Keras `.weights.h5`, or any ConvMixer → timm's format."""
    from keras_convmixer.pretrained import TORCH_SUFFIXES, local_weights_file, save_timm, sha256

    to_keras = args.output.endswith(".weights.h5")
    to_file = args.output.endswith(".safetensors")
    to_folder = os.path.isdir(args.output) or "." not in os.path.basename(args.output.rstrip("/"))
    if not (to_keras or to_file or to_folder):
        raise UserError(
            "the output must be FILE.weights.h5 (Keras), FILE.safetensors (timm's state dict) "
            f"or a folder (timm's Hugging Face layout); received {args.output}"
        )
    model = saved_model(args.source)
    if model is not None and (args.model or args.classes):
        raise UserError("--model and --classes build a model: not with a .keras source")
    if model is None:
        name = model_name(args, "")
        if not name:
            raise UserError(f"--model is needed to read {args.source} (all but .keras files)")
        model = build_model(name, args.source, args.classes, classifier_activation=None)
    if to_keras:
        model.save_weights(args.output)
        written = [args.output]
    else:
        from keras_convmixer.training import timm_data_config

        recipe = _saved_recipe(args)  # its evaluation transform, for timm and for predict
        data_config = timm_data_config(recipe) if recipe is not None else None
        written = save_timm(model, args.output, _read_classes(args), data_config)
    for path in written:
        print(f"wrote {path}  sha256 {sha256(path)}")
    if to_folder and len(written) == 1:
        print("no config.json: timm has no registered architecture of this shape; build")
        print("timm.models.convmixer.ConvMixer(...) with its arguments and load_state_dict()")
    if args.compare_timm:
        reference = local_weights_file(args.source) if to_keras else written[0]
        if not reference.lower().endswith((".safetensors", *TORCH_SUFFIXES)):
            raise UserError("--compare-timm needs a timm/PyTorch checkpoint as source or output")
        deviation = compare_with_timm(model, reference)
        print(f"max |output difference| against timm on random input: {deviation:.3e}")
    return 0


def compare_with_timm(model, checkpoint: str) -> float:
    """Max output deviation between `model` (channels-last, with its classifier) and timm's
    ConvMixer loaded from `checkpoint`, the model's classifier activation applied to timm's."""
    import keras
    import numpy as np

    try:
        import timm  # noqa: F401
        import torch
    except Exception as error:  # timm missing, or a torchvision that does not import
        raise UserError(f"--compare-timm needs torch and timm: {error}") from None
    from keras_convmixer.benchmark import timm_convmixer
    from keras_convmixer.model import block_count
    from keras_convmixer.pretrained import read_state_dict, timm_layout

    stem, block = model.get_layer("stem"), model.get_layer("block_0")
    head = model.get_layer("predictions")
    reference = timm_convmixer(
        stem.dim,
        block_count(model),
        block.kernel_size,
        stem.patch_size,
        block.get_config()["activation"],
        head.units,
    )
    state = {k: torch.from_numpy(v) for k, v in timm_layout(read_state_dict(checkpoint)).items()}
    reference.load_state_dict(state)
    height, width = (d if isinstance(d, int) else 224 for d in model.input_shape[1:3])
    x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype("float32")
    with torch.no_grad():
        logits = reference.eval()(torch.from_numpy(x)).numpy()
    expected = keras.ops.convert_to_numpy(head.activation(logits))
    ours = keras.ops.convert_to_numpy(model.predict(x.transpose(0, 2, 3, 1), verbose=0))
    return float(np.max(np.abs(ours - expected)))


def cmd_benchmark(args) -> int:
    import keras

    from keras_convmixer import benchmark
    from keras_convmixer.model import variant_from_name

    patch_size = variant_from_name(args.model).patch_size
    if args.image_size < patch_size:
        raise UserError(
            f"--image-size must be at least {args.model}'s patch size, {patch_size}; "
            f"received {args.image_size}"
        )
    if args.all_backends:
        if args.backend:
            raise UserError("--all-backends runs every backend; leave out --backend")
        # This command line again (the same program, so the same imports) without the flag or
        # any prefix of it that argparse took for it, once per backend.
        rest = [a for a in sys.orig_argv[1:] if not (len(a) > 2 and "--all-backends".startswith(a))]
        backends = installed_backends()
        if len(backends) < len(BACKENDS):
            left_out = ", ".join(b for b in BACKENDS if b not in backends)
            print(f"not installed, left out: {left_out}", file=sys.stderr)
        reports = benchmark.run_per_backend([sys.executable, *rest], backends)
        print(f"\n{args.model}, batch {args.batch}, {args.image_size}², {args.dtype_policy}")
        print(benchmark.combined_table(reports))
        benchmark.write_json({"runs": reports}, args.json)
        return 0
    keras.config.set_dtype_policy(args.dtype_policy)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    modes = ("inference", "train") if args.mode == "both" else (args.mode,)
    settings = (args.batch, args.image_size, modes)
    weights = benchmark.timm_weights(args.model) if args.compare_timm else None
    model = benchmark.keras_model(args.model, weights)
    steps = benchmark.keras_steps(model, *settings, jit_compile=jit)
    if args.compare_timm:
        for compile_model in (False, True) if args.timm_compile else (False,):
            steps |= benchmark.timm_steps(
                args.model, *settings, args.dtype_policy, compile_model, state_dict=weights
            )
    results = benchmark.measure(steps, args.batch, args.warmup, args.repeats)
    macs = benchmark.macs_per_image(args.model, args.image_size)
    machine = benchmark.machine()
    print(
        f"{args.model}, batch {args.batch}, {args.image_size}², {args.dtype_policy}, "
        f"{macs / 1e9:.2f} GMAC/image; {machine.get('cpu')}"
    )
    print(benchmark.table(results, macs, args.peak_tflops))
    report = {
        "settings": vars(args) | {"run": None},
        "machine": machine,
        "gmac_per_image": macs / 1e9,
        "results": [r.__dict__ for r in results],
    }
    benchmark.write_json(report, args.json)
    return 0


def load_data(args, split: str, shard: tuple[int, int] | None = None):
    """(tf.data dataset of encoded images and int labels, which the pipelines decode; class
    names or a class count); `shard`: this process's part only."""
    from keras_convmixer import data

    if args.tfds:
        return data.from_tfds(
            args.tfds,
            split,
            data_dir=args.tfds_data_dir,
            manual_dir=args.manual_dir,
            shard=shard,
            decode=False,
        )
    if not args.data_dir:
        raise UserError("give the data with --tfds NAME or --data-dir DIR")
    classes = _read_classes(args)
    return data.from_folder(args.data_dir, split, classes, shard=shard, decode=False)


def checkpoint_card(args) -> dict:
    """timm's `config.json` for the checkpoint that predict, evaluate or convert reads, from
    its Hub repository or beside the file (as `convert … FOLDER` writes it); {} if none.
    Read once per command."""
    if "checkpoint_card" not in vars(args):
        from keras_convmixer.pretrained import timm_config

        weights = getattr(args, getattr(args, "saved_model_argument", ""), None)
        local = weights in (None, "imagenet") or weights.endswith(".keras")
        args.checkpoint_card = {} if local else timm_config(weights) or {}
    return args.checkpoint_card


def model_name(args, default: str) -> str:
    """`--model`, else the architecture named in the checkpoint's config.json, else `default`."""
    from keras_convmixer.pretrained import variant_of_timm_architecture

    if args.model:
        return args.model
    return variant_of_timm_architecture(checkpoint_card(args).get("architecture")) or default


def _beside_saved_model(args, name: str) -> str | None:
    """The file `name` beside the `.keras` model that predict, evaluate or convert reads (in
    `train`'s output folder: `classes.json`, `recipe.json`); None when there is none."""
    model = getattr(args, getattr(args, "saved_model_argument", ""), None)
    if not (model and model.endswith(".keras")):
        return None
    path = os.path.join(os.path.dirname(model), name)
    return path if os.path.isfile(path) else None


def _read_classes(args) -> list[str] | None:
    """`--classes-file`, else `classes.json` beside a `.keras` model, else the checkpoint's
    `label_names`."""
    path = getattr(args, "classes_file", None) or _beside_saved_model(args, "classes.json")
    if not path:
        return checkpoint_card(args).get("label_names")
    with open(_existing_file(path)) as f:
        return json.load(f)


def _class_count(classes) -> int:
    return classes if isinstance(classes, int) else len(classes)


def _saved_recipe(args):
    """The `recipe.json` that `train` wrote beside a `.keras` model, as a Recipe; or None."""
    from keras_convmixer.training import Recipe

    saved = _beside_saved_model(args, "recipe.json")
    if not saved:
        return None
    with open(saved) as f:
        fields = json.load(f)
    return Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def recipe_from_args(args):
    """`--recipe` with the recipe flags given; without `--recipe`, the `recipe.json` that
    `train` wrote beside a `--weights MODEL.keras`, else the ImageNet recipe with the
    evaluation transform of the checkpoint's config.json, if any."""
    from keras_convmixer.training import Recipe, eval_fields_from_timm, get_recipe

    recipe = args.recipe or _saved_recipe(args)
    timm_cfg = checkpoint_card(args).get("pretrained_cfg")
    if recipe is None and timm_cfg:
        recipe = get_recipe("imagenet", **eval_fields_from_timm(timm_cfg))
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Recipe)
        if getattr(args, f.name, None) is not None
    }
    return get_recipe(recipe or "imagenet", **overrides)


def cmd_train(args) -> int:
    import keras

    from keras_convmixer import data, distribute, training

    recipe = recipe_from_args(args)
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    training.set_mixed_precision(recipe.mixed_precision)
    setup = distribute.setup(args.distribute, per_process_data=True)
    if setup.mode == "multi-worker":
        raise UserError(
            "train cannot run under MultiWorkerMirroredStrategy: Keras 3's fit does not "
            "(keras-team/keras#20585). Train on several machines with --backend jax "
            "--distribute data-parallel"
        )
    batch = setup.check_batch(recipe.batch_size)
    process_batch = setup.process_batch(batch)
    train_source, classes = load_data(args, args.train_split, setup.shard)
    val_source, _ = load_data(args, args.val_split or _default_val_split(args), setup.shard)
    count = _class_count(classes)
    # Every process runs as many steps: the fewest whole batches that any part holds.
    own_batches = int(train_source.cardinality()) // process_batch
    steps = args.steps_per_epoch or setup.across_processes(own_batches, min)
    if steps < 1:
        raise UserError("the number of training batches is unknown: pass --steps-per-epoch")
    output = setup.write_dir(args.output)
    train = data.train_pipeline(
        train_source,
        count,
        recipe,
        batch_size=process_batch,
        seed=setup.process_seed(args.seed),
        batches=None if args.steps_per_epoch else steps,
        # A resumed run goes on with the batches it would have had (a pass is an epoch).
        initial_epoch=0 if args.steps_per_epoch else training.resumed_epoch(output),
        uint8_images=args.uint8_images,
    )
    val = data.eval_pipeline(
        val_source,
        count,
        recipe,
        batch_size=process_batch,
        pad_to=setup.eval_pad_to(batch),
        batches=setup.eval_batches(val_source, batch),
        uint8_images=args.uint8_images,
    )
    with setup.scope():
        model = saved_model(args.weights)  # train's own model.keras: trained on
        if model is None:
            name = model_name(args, "convmixer_256_8")
            input_shape = (recipe.image_size, recipe.image_size, 3)
            model = build_model(name, args.weights, count, fine_tune=True, input_shape=input_shape)
        elif args.model or model.output_shape[-1] != count:
            raise UserError(
                f"--weights {args.weights} is a model of {model.output_shape[-1]} classes, "
                f"trained on as it is: without --model, for data of as many classes ({count})"
            )
        if args.freeze is not None:
            training.freeze(model, None if args.freeze == "all" else args.freeze)
        if args.remat:
            training.set_remat(model)
        # The model saved and checkpointed is the one behind the input stage.
        trained = training.with_input_stage(model, recipe) if args.uint8_images else model
        training.compile_for_recipe(trained, recipe, steps_per_epoch=steps)
    trained.fit(
        train.repeat() if args.steps_per_epoch else train,
        epochs=recipe.epochs,
        steps_per_epoch=args.steps_per_epoch,
        validation_data=val,
        callbacks=training.make_callbacks(output, best_of="val_accuracy"),
        shuffle=False,  # the pipeline shuffles; Keras warns that it ignores True for a dataset
        verbose=2,
    )
    results = trained.evaluate(val, return_dict=True, verbose=0)
    # Every process saves (the others into their scratch folders): saving creates variables,
    # which under several JAX processes is a step that all of them must take together.
    model.save(os.path.join(output, "model.keras"))
    model.save_weights(os.path.join(output, "model.weights.h5"))
    if setup.is_chief:  # what predict and evaluate read beside model.keras
        with open(os.path.join(output, "recipe.json"), "w") as f:
            json.dump(dataclasses.asdict(recipe), f, indent=1)
        if not isinstance(classes, int):
            with open(os.path.join(output, "classes.json"), "w") as f:
                json.dump(list(classes), f)
    print(f"held-out accuracy: {results['accuracy']:.4f}")
    return 0


def _default_val_split(args) -> str:
    if args.data_dir:
        return "val"
    return {"imagenet2012": "validation", "imagenette": "validation"}.get(args.tfds, "test")


def cmd_evaluate(args) -> int:
    import keras

    from keras_convmixer import data
    from keras_convmixer.pretrained import WEIGHTS

    recipe = recipe_from_args(args)
    source, classes = load_data(args, args.split or _default_val_split(args))
    count = _class_count(classes)
    model = saved_model(args.weights)
    if model is None:
        input_shape = (recipe.image_size, recipe.image_size, 3)
        name = model_name(args, "convmixer_1536_20")
        model = build_model(name, args.weights, count, input_shape=input_shape)
    if model.output_shape[-1] != count:
        raise UserError(f"the model has {model.output_shape[-1]} classes, the data {count}")
    model.compile(
        loss="categorical_crossentropy",
        metrics=[
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(min(5, count), name="top5"),
        ],
    )
    batches = data.eval_pipeline(source, count, recipe, batch_size=args.batch_size or 64)
    results = model.evaluate(batches, return_dict=True, verbose=1)
    print(f"top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}")
    published = WEIGHTS.get(args.model) if args.weights == "imagenet" and count == 1000 else None
    if published:
        print(f"published top-1 on the ImageNet-1k validation set: {published.top1 / 100:.4f}")
    if args.compare_policy:
        from keras_convmixer.benchmark import policy_agreement

        agreement = policy_agreement(model, batches.as_numpy_iterator(), args.compare_policy)
        print(
            f"{args.compare_policy}: top-1 {agreement['top1_policy']:.4f}, top-1 agreement "
            f"with float32 {agreement['top1_agreement']:.4f} ({agreement['images']} images)"
        )
    return 0


# What `export` writes, by the output's suffix: Keras' format, the backend it runs on, and why
# not elsewhere. A folder (any other name) is a TensorFlow SavedModel.
EXPORT_FORMATS = {
    ".onnx": (
        "onnx",
        "torch",
        "tf2onnx cannot convert TensorFlow's exact GELU; JAX needs jax2onnx",
    ),
    ".tflite": (
        "litert",
        "tensorflow",
        "from PyTorch Keras needs litert-torch, from JAX it cannot",
    ),
}


def cmd_export(args) -> int:
    """A model for serving: a TensorFlow SavedModel folder (TensorFlow or JAX backend; any
    image size), an `.onnx` file (PyTorch backend) or a LiteRT `.tflite` file (TensorFlow
    backend); the files of `--image-size`, any batch."""
    import keras

    backend = keras.backend.backend()
    suffix = os.path.splitext(args.output)[1].lower()
    export_format, needed, why = EXPORT_FORMATS.get(suffix, ("tf_saved_model", None, ""))
    if needed and backend != needed:
        raise UserError(
            f"{suffix} export runs on the {needed} backend: add --backend {needed} ({why})"
        )
    if not needed and backend == "torch":
        raise UserError(
            "Keras cannot export a SavedModel from PyTorch: add --backend tensorflow or jax, "
            "or name an .onnx file"
        )
    if export_format == "tf_saved_model":
        # Needed from JAX too. Imported now, a missing one gets INSTALL_HINTS' line; Keras'
        # own lazy import would fail later, as an ImportError with a traceback.
        import tensorflow  # noqa: F401
    if args.include_preprocessing and args.weights.endswith(".keras"):
        raise UserError("--include-preprocessing builds a model: not with a .keras file")
    options = {}
    if args.quantize:
        if export_format != "litert":
            raise UserError("--quantize is for .tflite files")
        import tensorflow as tf

        options["optimizations"] = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations
    model = saved_model(args.weights)
    if model is None:
        model = build_model(
            model_name(args, "convmixer_1536_20"),
            args.weights,
            include_preprocessing=args.include_preprocessing,
        )
    if needed:
        patch = model.get_layer("stem").patch_size
        if args.image_size < patch:
            raise UserError(f"--image-size must be at least one patch, {patch}")
        size = (args.image_size, args.image_size, 3)
        spec = keras.InputSpec(shape=(None, *size), dtype="float32")
        with warnings.catch_warnings():
            if export_format == "onnx":  # torch's trace is of one size: its shapes are constants
                import torch

                warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model.export(
                args.output, format=export_format, input_signature=[spec], verbose=False, **options
            )
        print(f"wrote {args.output}: images (batch, {args.image_size}, {args.image_size}, 3)")
        return 0
    if backend == "jax":  # open sizes: no gradient; lowered for CPUs and NVIDIA GPUs
        serialization = {"with_gradient": False, "native_serialization_platforms": ("cpu", "cuda")}
        options["jax2tf_kwargs"] = serialization
    model.export(args.output, format="tf_saved_model", verbose=False, **options)
    print(f"wrote {args.output}: serve(images), images (batch, height, width, 3) of any size")
    return 0


def cmd_info(args) -> int:
    import keras
    import numpy as np

    from keras_convmixer import __version__
    from keras_convmixer.distribute import list_devices
    from keras_convmixer.pretrained import WEIGHTS, cache_dir, converted_path

    backend = keras.backend.backend()
    print(f"keras_convmixer {__version__}")
    print(f"keras {keras.__version__}, numpy {np.__version__}")
    print(f"backend {backend} ({backend} {__import__(backend).__version__})")  # module's name
    print(f"devices {', '.join(list_devices())}")
    print(f"weights cache {cache_dir()}")
    for name, checkpoint in WEIGHTS.items():
        state = "cached" if os.path.exists(converted_path(name)) else "not cached"
        print(f"  {name:<20} ImageNet top-1 {checkpoint.top1:.2f}  {state}")
    # Hub checkpoints, one folder a revision: delete one to fetch a branch's newer files.
    for folder in sorted(glob.glob(os.path.join(cache_dir(), "hub", "*", "*", "*"))):
        owner, repo, revision = folder.split(os.sep)[-3:]
        address = f"hf://{owner}/{repo}@{urllib.parse.unquote(revision)}"
        print(f"  {address}  {', '.join(sorted(os.listdir(folder)))}  ({folder})")
    return 0


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `Recipe` field (`--lr`, `--weight-decay`, …); unset flags keep the recipe's."""
    from keras_convmixer.training import RANDAUGMENT_MAX_MAGNITUDE, RECIPES, Recipe

    group = parser.add_argument_group("recipe (defaults: the chosen --recipe's values)")
    imagenet, cifar = RECIPES["imagenet"], RECIPES["cifar10"]
    for field in dataclasses.fields(Recipe):
        flag = "--" + field.name.replace("_", "-")
        defaults = f"imagenet {getattr(imagenet, field.name)}, cifar10 {getattr(cifar, field.name)}"
        if field.type in ("bool",):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=defaults)
        elif field.name == "randaugment_policy":
            group.add_argument(flag, choices=sorted(RANDAUGMENT_MAX_MAGNITUDE), help=defaults)
        elif field.type.startswith("tuple"):
            group.add_argument(
                flag, type=float, nargs=len(getattr(imagenet, field.name)), help=defaults
            )
        else:
            kind = int if field.type == "int" else float
            group.add_argument(flag, type=kind, help=defaults)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="keras-convmixer", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", choices=BACKENDS, help="Keras backend (sets KERAS_BACKEND)")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "predict", parents=[common], help="classify images (default: a bundled cat photo)"
    )
    p.add_argument(
        "images", nargs="*", help="image files or folders of them; none: the bundled sample photo"
    )
    p.add_argument(
        "--batch-size",
        dest="batch",  # not the recipe's batch_size
        type=at_least(1),
        default=32,
        help="images read and classified at once",
    )
    p.add_argument("--model", help=model_help("else convmixer_1536_20"))
    p.add_argument(
        "--weights",
        default="imagenet",
        help=f"'imagenet', {HUB}, a file, or a .keras model (e.g. train's)",
    )
    p.add_argument("--top", type=at_least(1), default=5, help="classes to show per image")
    p.add_argument(
        "--classes",
        type=at_least(1),
        help="classifier size of --weights; default: its config.json's, else the variant's",
    )
    p.add_argument(
        "--classes-file",
        help="JSON list of class names; default: ImageNet's, or classes.json beside MODEL.keras",
    )
    p.add_argument(
        "--recipe",
        choices=("imagenet", "cifar10"),
        help="its evaluation transform; default: recipe.json beside MODEL.keras, else imagenet",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_predict, saved_model_argument="weights")

    p = sub.add_parser(
        "convert", parents=[common], help="timm/PyTorch checkpoint → Keras, or Keras → timm"
    )
    p.add_argument(
        "source",
        help="a timm/PyTorch checkpoint (.safetensors, .pth, .pth.tar, .bin), a .weights.h5, "
        "or a .keras model",
    )
    p.add_argument(
        "output",
        help="FILE.weights.h5 (Keras), FILE.safetensors (timm's state dict), or a folder "
        "(timm's Hugging Face layout: model.safetensors, config.json)",
    )
    p.add_argument("--model", help=model_help("needed otherwise (not with a .keras source)"))
    p.add_argument(
        "--classes",
        type=at_least(1),
        help="classifier size; default: config.json's, or the variant's",
    )
    p.add_argument(
        "--classes-file", help="JSON class names for config.json; default: classes.json beside"
    )
    p.add_argument("--compare-timm", action="store_true", help="max output difference vs timm")
    p.set_defaults(run=cmd_convert, saved_model_argument="source")

    data_args = argparse.ArgumentParser(add_help=False)
    data_args.add_argument("--tfds", help="a TensorFlow Datasets name, e.g. cifar10")
    data_args.add_argument("--tfds-data-dir", help="where tfds keeps its data")
    data_args.add_argument("--manual-dir", help="manually downloaded archives (imagenet2012)")
    data_args.add_argument("--data-dir", help="an image folder: DIR/<split>/<class>/*.jpg")
    data_args.add_argument("--classes-file", help="JSON list of class names (label order)")
    data_args.add_argument(
        "--recipe",
        choices=("imagenet", "cifar10"),
        help="default: recipe.json beside --weights MODEL.keras, else imagenet",
    )
    add_recipe_flags(data_args)

    p = sub.add_parser("train", parents=[common, data_args], help="train or fine-tune")
    p.add_argument(
        "--model",
        help=model_help("else convmixer_256_8"),
    )
    p.add_argument(
        "--weights",
        help=f"start from 'imagenet', {HUB}, a file, or a .keras model (and its recipe.json, "
        "classes.json)",
    )
    p.add_argument("--output", required=True, help="folder for checkpoints, logs and the model")
    p.add_argument(
        "--freeze",
        type=blocks_or_all,
        metavar="N|all",
        help="fine-tuning: keep the stem and the first N blocks (all: the backbone) as they are",
    )
    p.add_argument(
        "--remat",
        action="store_true",
        help="gradient checkpointing: compute each block again in the backward pass, to save "
        "memory for 20-40%% more time a step",
    )
    p.add_argument(
        "--uint8-images",
        action="store_true",
        help="timm's train.py split: the pipelines give uint8 images (a quarter of the bytes, "
        "less CPU work) and the model normalises and erases them on its device",
    )
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", help="default: val (folders), test or validation (tfds)")
    p.add_argument("--distribute", default="auto", choices=MODES_DISTRIBUTE)
    p.add_argument(
        "--steps-per-epoch", type=at_least(1), help="needed when the data size is unknown"
    )
    p.add_argument("--seed", type=at_least(0), help="reproducible run")
    p.set_defaults(run=cmd_train, saved_model_argument="weights")

    p = sub.add_parser("evaluate", parents=[common, data_args], help="top-1 / top-5 accuracy")
    p.add_argument("--model", help=model_help("else convmixer_1536_20"))
    p.add_argument(
        "--weights",
        default="imagenet",
        help=f"'imagenet', {HUB}, a file, a .keras",
    )
    p.add_argument("--split", help="default: val (folders), test or validation (tfds)")
    p.add_argument(
        "--compare-policy",
        choices=("mixed_bfloat16", "mixed_float16"),
        help="also run the model under this dtype policy; report its top-1 agreement with float32",
    )
    p.set_defaults(run=cmd_evaluate, saved_model_argument="weights")

    p = sub.add_parser("benchmark", parents=[common], help="throughput, optionally beside timm")
    p.add_argument("--model", default="convmixer_768_32", help=MODEL_HELP)
    p.add_argument("--batch", type=at_least(1), default=8)
    p.add_argument("--image-size", type=at_least(1), default=224)
    p.add_argument(
        "--dtype-policy", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16")
    )
    p.add_argument("--mode", default="both", choices=("inference", "train", "both"))
    p.add_argument("--warmup", type=at_least(0), default=2)
    p.add_argument("--repeats", type=at_least(1), default=5)
    p.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"))
    p.add_argument(
        "--all-backends",
        action="store_true",
        help="run once per installed backend, each in a process of its own; one table",
    )
    p.add_argument("--compare-timm", action="store_true", help="also time timm in this process")
    p.add_argument("--timm-compile", action="store_true", help="also time timm + torch.compile")
    p.add_argument("--peak-tflops", type=positive_float, help="device peak, to report MFU")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.set_defaults(run=cmd_benchmark)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="a SavedModel folder, an .onnx file (torch backend) or a .tflite (tensorflow)",
    )
    p.add_argument("output", help="a folder (TensorFlow SavedModel), FILE.onnx or FILE.tflite")
    p.add_argument("--model", help=model_help("else convmixer_1536_20"))
    p.add_argument(
        "--weights",
        default="imagenet",
        help=f"'imagenet', {HUB}, a file, a .keras",
    )
    p.add_argument("--image-size", type=at_least(1), default=224, help=".onnx, .tflite: fixed size")
    p.add_argument(
        "--include-preprocessing",
        action="store_true",
        help="take RGB in [0, 255] (ImageNet normalisation inside the model)",
    )
    p.add_argument(
        "--quantize",
        action="store_true",
        help=".tflite: weights as int8 (dynamic range), about 4× smaller; activations float",
    )
    p.set_defaults(run=cmd_export, saved_model_argument="weights")

    p = sub.add_parser("info", parents=[common], help="versions, backend, devices, weights cache")
    p.set_defaults(run=cmd_info)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.backend and _loaded_backend() not in (None, args.backend):
        # Importing this package imported Keras with another backend: start again with it set.
        env = {**os.environ, "KERAS_BACKEND": args.backend}
        os.execve(sys.executable, [sys.executable, "-m", "keras_convmixer", *argv], env)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    try:
        return args.run(args)
    except ModuleNotFoundError as error:
        if error.name not in INSTALL_HINTS:
            raise
        print(f"keras-convmixer: error: {INSTALL_HINTS[error.name]}", file=sys.stderr)
        return 2
    except (UserError, ValueError, OSError) as error:
        print(f"keras-convmixer: error: {error}", file=sys.stderr)
        return 2


def _loaded_backend() -> str | None:
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None
