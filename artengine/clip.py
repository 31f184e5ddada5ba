"""The CLIP layer: one way to load a CLIP model and turn images and texts into embeddings.

open_clip is the implementation. :func:`load_clip` accepts:

* nothing: the tiny CLIP shipped inside artengine (trained by ``artengine clip train``
  on the built-in shapes; no network, ever);
* an open_clip model name and pretrained tag (``"ViT-B-32"``, ``"laion2b_s34b_b79k"``):
  the weights come from the Hugging Face hub cache; they are downloaded only when they are
  missing, the hub is reachable and ``HF_HUB_OFFLINE`` is not set. Anything else is one
  :class:`~artengine.errors.ModelLoadError`, never a traceback or a long wait;
* a local checkpoint: a folder in open_clip's layout (``open_clip_config.json`` plus
  ``*.safetensors``), a ``.safetensors`` file next to such a config, or an open_clip
  model name with a ``.safetensors`` file as ``pretrained``.

Weights are read from safetensors only: a pickle checkpoint (``.pt``, ``.bin``) is refused,
because unpickling runs code. Loaded models are cached per process, so every consumer
(feature extractor, bias audit, metrics) shares one model and one text-embedding cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from .architecture import cpu_layout
from .errors import ArtengineError, ModelLoadError

log = logging.getLogger("artengine.clip")

#: Name of the shipped offline model in manifests and reports.
TINY_CLIP_NAME = "artengine-tiny-clip"
_TINY_CLIP_PACKAGE = "artengine.clip_weights"
_TINY_CLIP_FOLDER = "tiny_clip"
_CONFIG_NAME = "open_clip_config.json"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
_HUB_PROBE_TIMEOUT = 5.0
#: open_clip preprocess settings this layer reproduces (open_clip's ``preprocess_cfg``).
_INTERPOLATIONS = ("bicubic", "bilinear")
_RESIZE_MODES = ("shortest", "squash")


#: Pixels (bytes) that :meth:`ClipModel.prepare` resizes in one call at most.
_GROUP_BYTES = 64 * 2**20


class ClipModel:
    """A loaded CLIP model: batched, L2-normalised image and text embeddings.

    ``name`` says which model this is (for reports); ``weights_sha256`` identifies the
    exact weights (for manifests and cache keys). ``logit_scale`` is the model's learned
    temperature, used to turn cosine similarities into class probabilities.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_path: str | None = None,
        weights_sha256: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.weights_path = weights_path
        self._sha256 = weights_sha256
        if interpolation not in _INTERPOLATIONS:
            raise ModelLoadError(name, f"image interpolation {interpolation!r} is not supported "
                                       f"(supported: {', '.join(_INTERPOLATIONS)})")
        if resize_mode not in _RESIZE_MODES:
            raise ModelLoadError(name, f"image resize mode {resize_mode!r} is not supported "
                                       f"(supported: {', '.join(_RESIZE_MODES)})")
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply and one subtract per batch
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = mean_t / std_t
        self._text_cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.logit_scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
        self.embed_dim = int(self._probe_dim())

    def _probe_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        return int(self.encode_texts(["a"]).shape[1])

    # ------------------------------------------------------------------ identity

    @property
    def weights_sha256(self) -> str:
        """Hex sha256 of the weights file (computed once, on first use)."""
        if self._sha256 is None:
            if self.weights_path is None:
                raise ArtengineError(f"CLIP model {self.name}: no weights file to identify")
            from .io import sha256_file

            self._sha256 = sha256_file(self.weights_path)
        return self._sha256

    def describe(self) -> dict[str, Any]:
        """What a manifest or report records about the model."""
        return {"name": self.name, "weights_sha256": self.weights_sha256,
                "embed_dim": self.embed_dim, "image_size": self.image_size}

    # ------------------------------------------------------------------ images

    def preprocess(self, images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray]) -> torch.Tensor:
        """Images to the model's normalised ``(N, 3, S, S)`` float input, as open_clip's own
        preprocess makes it: resize (shortest side to S and centre crop, or squash to S x S,
        as the model's preprocess config says) with antialiased bicubic (or bilinear)
        interpolation, then normalise.

        Done per batch, not per image: the pixels are gathered once as uint8, images of one
        size are resized together by one torch call on uint8 (the same filter as PIL's
        resize, which open_clip uses; results differ by at most a grey level or two), and
        the float conversion and normalisation is one pass over the batch."""
        x = self.prepare(images).to(torch.float32, memory_format=torch.channels_last)
        return x.mul_(self._scale).sub_(self._shift)

    def prepare(self, images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray]) -> torch.Tensor:
        """Images resized and cropped to the model's input, not yet normalised: a uint8
        ``(N, 3, S, S)`` tensor (see :meth:`preprocess`)."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError(f"expected a uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}")
            return self._resize_group(_nchw(images))
        size = self.image_size
        images = [_rgb(image) for image in images]
        out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(_height_width(image), []).append(i)
        for (height, width), same_size in groups.items():
            # At most _GROUP_BYTES of pixels are gathered at once: a chunk of camera-size
            # images is resized a few at a time, not copied whole (32 12-megapixel JPEGs:
            # 1.15 GB more at the peak otherwise).
            step = max(1, _GROUP_BYTES // (height * width * 3))
            for start in range(0, len(same_size), step):
                indices = same_size[start:start + step]
                # Each image's pixels are copied once, straight into the group's buffer (a
                # list of arrays and np.stack would copy a PIL image twice).
                stacked = np.empty((len(indices), height, width, 3), dtype=np.uint8)
                for row, i in enumerate(indices):
                    stacked[row] = images[i]
                resized = self._resize_group(_nchw(stacked))
                if len(indices) == len(images):
                    return resized
                out[indices] = resized
        return out

    def _resize_group(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(n, 3, H, W)`` images of one size to ``(n, 3, S, S)``."""
        size = self.image_size
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.resize_mode == "squash":
            nh, nw = size, size
        else:  # shortest side to size (torchvision's Resize(int)), then centre crop
            short, long = min(h, w), max(h, w)
            new_long = int(size * long / short)
            nh, nw = (size, new_long) if h <= w else (new_long, size)
        if (nh, nw) != (h, w):
            x = torch.nn.functional.interpolate(x.contiguous(memory_format=torch.channels_last), size=(nh, nw),
                                                mode=self.interpolation, antialias=True, align_corners=False)
        if (nh, nw) != (size, size):
            top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
            x = x[:, :, top:top + size, left:left + size]
        return x

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray],
                      batch_size: int | None = None) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of RGB images (a uint8 ``(N, H, W, 3)``
        array, or a list of PIL images or uint8 arrays), encoded in batches."""
        n = len(images)
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        step = batch_size or self.batch_size
        for start in range(0, n, step):
            batch = self.preprocess(images[start:start + step]).to(self.device)
            features = self.model.encode_image(batch)
            out[start:start + len(batch)] = torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
        return out

    # ------------------------------------------------------------------ texts

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised text embeddings; each distinct text is encoded
        once per process and cached."""
        texts = [str(t) for t in texts]
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
            for start in range(0, len(missing), 256):
                chunk = missing[start:start + 256]
                tokens = self.tokenizer(chunk).to(self.device)
                features = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
                for text, row in zip(chunk, features.cpu().numpy()):
                    self._text_cache[text] = row
            if not texts:
                return np.empty((0, self.embed_dim), dtype=np.float32)
            return np.stack([self._text_cache[t] for t in texts]).astype(np.float32)

    def encode_prompt_ensemble(self, templates: Iterable[str], value: str) -> np.ndarray:
        """One ``(D,)`` class embedding for ``value``: the normalised mean of its prompts
        (each template with ``{}`` replaced by ``value``), as in CLIP's prompt ensembling."""
        prompts = [fill_template(t, value) for t in templates]
        mean = self.encode_texts(prompts).mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def __repr__(self) -> str:
        return f"ClipModel({self.name!r}, dim={self.embed_dim}, image_size={self.image_size})"


def _nchw(images: np.ndarray) -> torch.Tensor:
    """A uint8 ``(N, H, W, 3)`` array as an ``(N, 3, H, W)`` tensor sharing its memory
    (channels-last strides, which torch's uint8 resize is fastest on)."""
    if not images.flags.writeable:  # torch tensors cannot be read-only
        images = images.copy()
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def _rgb(image: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
    """One image checked and, for PIL, converted to RGB: a ``(H, W, 3)`` uint8 array or an
    RGB PIL image (whose pixels numpy reads through the array interface)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
        return image
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _height_width(image: Image.Image | np.ndarray) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    return image.height, image.width


def fill_template(template: str, value: str) -> str:
    """A prompt from a template: ``{}`` or ``{value}`` is replaced by ``value``."""
    return template.replace("{value}", value).replace("{}", value)


# ----------------------------------------------------------------------------- loading

_cache: dict[tuple[str | None, str | None, str], ClipModel] = {}
_cache_lock = threading.Lock()


def load_clip(model: str | None = None, pretrained: str | None = None, device: str = "cpu") -> ClipModel:
    """Load a CLIP model (cached per process): ``None`` is the shipped tiny CLIP; an
    open_clip name with a pretrained tag or a ``.safetensors`` file; or a local checkpoint
    folder / file. Raises :class:`ModelLoadError` with one clear line when it cannot."""
    key = (model, pretrained, str(device))
    with _cache_lock:
        found = _cache.get(key)
        if found is None:
            found = _load_uncached(model, pretrained, device)
            _cache[key] = found
        return found


def clear_clip_cache() -> None:
    """Forget loaded models (tests, long-lived processes switching models)."""
    with _cache_lock:
        _cache.clear()


def tiny_clip_path() -> Path:
    """Folder of the shipped tiny CLIP (config + safetensors) inside the package."""
    return Path(str(resources.files(_TINY_CLIP_PACKAGE) / _TINY_CLIP_FOLDER))


def _load_uncached(model: str | None, pretrained: str | None, device: str) -> ClipModel:
    if model is None:
        if pretrained is not None:
            raise ModelLoadError(pretrained, "a pretrained tag or file needs a CLIP model name (--clip-model)")
        folder = tiny_clip_path()
        if not (folder / _CONFIG_NAME).is_file():
            raise ModelLoadError(folder, "the shipped tiny CLIP is missing from this installation; "
                                         "re-create it with `artengine clip train --out DIR` and pass --clip-model DIR")
        return _load_local_dir(folder, device, name=TINY_CLIP_NAME)
    path = Path(model)
    if path.is_dir():
        return _load_local_dir(path, device, name=str(path))
    if path.suffix.lower() in (".safetensors", *_PICKLE_SUFFIXES) or path.exists():
        return _load_local_file(path, pretrained, device)
    return _load_named(model, pretrained, device)


def _load_local_dir(folder: Path, device: str, *, name: str) -> ClipModel:
    config_path = folder / _CONFIG_NAME
    if not config_path.is_file():
        raise ModelLoadError(folder, f"not a CLIP checkpoint folder: {_CONFIG_NAME} is missing")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES]
        why = (f"only pickle checkpoints ({', '.join(pickles)}); artengine loads safetensors only"
               if pickles else "no .safetensors weights file")
        raise ModelLoadError(folder, why)
    preferred = [w for w in weights if w.name == "open_clip_model.safetensors"]
    return _build(f"local-dir:{folder}", None, (preferred or weights)[0], device, name=name,
                  config_path=config_path)


def _load_local_file(path: Path, pretrained: str | None, device: str) -> ClipModel:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelLoadError(path, "pickle checkpoints are refused (unpickling can run code); "
                                   "convert it to .safetensors")
    if not path.is_file():
        raise ModelLoadError(path, "no such CLIP checkpoint file")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(path, "not a .safetensors file")
    config_path = path.parent / _CONFIG_NAME
    if pretrained is not None:
        raise ModelLoadError(path, "pass the architecture as --clip-model and this file as --clip-pretrained")
    if not config_path.is_file():
        raise ModelLoadError(path, f"no {_CONFIG_NAME} beside it; pass the open_clip architecture "
                                   "as --clip-model NAME and this file as --clip-pretrained")
    return _build(f"local-dir:{path.parent}", None, path, device, name=str(path), config_path=config_path)


def _load_named(model: str, pretrained: str | None, device: str) -> ClipModel:
    import open_clip

    known = open_clip.list_models()
    if model not in known:
        close = [m for m in known if model.lower().replace("/", "-") in m.lower()][:8]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelLoadError(model, f"not an open_clip model name, a checkpoint folder or a .safetensors file{hint}")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained is None:
        raise ModelLoadError(model, "name the pretrained weights with --clip-pretrained "
                                    f"(tags: {', '.join(tags) or 'none'}) or a .safetensors file")
    file = Path(pretrained)
    if file.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelLoadError(file, "pickle checkpoints are refused (unpickling can run code); "
                                   "convert it to .safetensors")
    if file.suffix.lower() == ".safetensors" or file.is_file():
        if not file.is_file():
            raise ModelLoadError(file, "no such CLIP weights file")
        if file.suffix.lower() != ".safetensors":
            raise ModelLoadError(file, "not a .safetensors file")
        return _build(model, None, file, device, name=f"{model} {file}")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise ModelLoadError(f"{model} {pretrained}",
                             f"unknown pretrained tag (tags for {model}: {', '.join(tags) or 'none'})")
    weights = _hub_safetensors(model, pretrained, cfg)
    extra = {"force_quick_gelu": bool(cfg.get("quick_gelu", False)),
             "force_preprocess_cfg": {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                      if cfg.get(k) is not None}}
    return _build(model, extra, weights, device, name=f"{model}/{pretrained}")


def _hub_safetensors(model: str, tag: str, cfg: Mapping[str, Any]) -> Path:
    """The safetensors weights of an open_clip pretrained tag: from the hub cache, or
    downloaded when allowed and reachable. Never a pickle file."""
    hub = cfg.get("hf_hub", "")
    label = f"{model} {tag}"
    if not hub:
        raise ModelLoadError(label, "these weights are published only as a pickle checkpoint; "
                                    "artengine loads safetensors only")
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    if filename.endswith(".safetensors"):
        candidates = [filename]
    elif filename:
        candidates = [filename.rsplit(".", 1)[0] + ".safetensors"]
    else:
        candidates = ["open_clip_model.safetensors"]
    for name in candidates:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    where = f"hf-hub {repo_id}/{candidates[0]}"
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(label, f"not in the local hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                                    f"is set; download {where} on a connected machine first")
    reason = _hub_unreachable(constants.ENDPOINT)
    if reason:
        raise ModelLoadError(label, f"not in the local hub cache ({constants.HF_HUB_CACHE}) and the hub "
                                    f"cannot be reached ({reason}); download {where} on a connected machine "
                                    "or pass a local .safetensors file")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=candidates[0]))
    except Exception as exc:  # network, auth, missing file: one line for the user
        raise ModelLoadError(label, f"download of {where} failed: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached, or None. A short TCP probe, because the hub client
    retries for tens of seconds before giving up on a machine without network."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides; a direct probe would say nothing
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT):
            return None
    except OSError as exc:
        return f"{host}: {exc.strerror or exc}"


def _build(arch: str, extra: Mapping[str, Any] | None, weights: Path, device: str, *, name: str,
           config_path: Path | None = None) -> ClipModel:
    """Create the open_clip architecture without weights, then load the safetensors."""
    import open_clip
    from safetensors import SafetensorError

    # open_clip logs "initialized randomly" on the root logger here; the weights follow.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(arch, pretrained=None, load_weights=False, device="cpu",
                                       **dict(extra or {}))
    except Exception as exc:  # a malformed config file
        where = config_path or arch
        raise ModelLoadError(where, f"cannot build the CLIP architecture: {type(exc).__name__}: {exc}") from None
    finally:
        logging.disable(previous)
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True, device="cpu")
    except SafetensorError as exc:
        raise ModelLoadError(weights, f"corrupt safetensors file: {exc}") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(weights, f"weights do not fit the architecture: {first}") from None
    except OSError as exc:
        raise ModelLoadError(weights, f"cannot read: {exc.strerror or exc}") from None
    # In the engine's CPU layout (the shipped tiny CLIP's ResNet encoder: 1.34 against 1.96 ms
    # per image, embeddings equal to 1e-5; ViT-B-32 unchanged); preprocess hands images over in it.
    model = cpu_layout(model.float().to(device), device).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    preprocess = getattr(model.visual, "preprocess_cfg", None) or {}
    size = preprocess.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))
    digest = _hub_blob_sha256(weights)
    log.info("loaded CLIP %s from %s", name, weights)
    return ClipModel(model, tokenizer, name=name, image_size=int(size), mean=mean, std=std,
                     weights_path=str(weights), weights_sha256=digest, device=device,
                     interpolation=str(preprocess.get("interpolation") or "bicubic"),
                     resize_mode=str(preprocess.get("resize_mode") or "shortest"))


def _hub_blob_sha256(path: Path) -> str | None:
    """The hub cache names LFS blobs by their sha256: reuse it instead of hashing 600 MB."""
    resolved = path.resolve()
    name = resolved.name
    if resolved.parent.name == "blobs" and len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


def clip_from_module(model: torch.nn.Module, *, name: str, image_size: int | None = None,
                     context_length: int | None = None, device: str = "cpu") -> ClipModel:
    """Wrap an open_clip model already in memory (a freshly trained or randomly
    initialised one, for evaluation and benchmarks). Its ``weights_sha256`` is the hash
    of its current parameters."""
    import open_clip

    size = image_size or getattr(model.visual, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length or getattr(model, "context_length", 77))
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return ClipModel(model.to(device), tokenizer, name=name, image_size=int(size),
                     mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
                     weights_sha256=digest.hexdigest(), device=device)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The open_clip config JSON of a checkpoint folder."""
    return json.loads((Path(folder) / _CONFIG_NAME).read_text())


def clip_for_context(context: Any, settings: Mapping[str, Any] | None = None) -> ClipModel:
    """The one CLIP model of an audit run, shared by every consumer.

    The command line (``AuditContext.clip_model`` / ``clip_pretrained``) wins over the
    policy's ``[features.clip]`` settings (``model``, ``pretrained``, ``device``); with
    neither, the shipped tiny CLIP. The choice is written back into ``context``, so the
    bias audit encodes its prompts with the model that encoded the images.
    """
    settings = settings or {}
    if context.clip_model or context.clip_pretrained:
        model, pretrained = context.clip_model or None, context.clip_pretrained or None
    else:
        model, pretrained = settings.get("model") or None, settings.get("pretrained") or None
    device = settings.get("device") or context.extra.get("clip_device") or "cpu"
    clip = load_clip(model, pretrained, device)
    context.clip_model, context.clip_pretrained = model, pretrained
    context.extra["clip_device"] = device
    return clip
