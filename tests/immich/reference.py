#!/usr/bin/env python3
"""A reference implementation of Immich's machine-learning server, for herd's Immich tests.

It reproduces what Immich's `immich_ml` package does around each ONNX model, step by step, with
the libraries Immich itself uses (Pillow, numpy, OpenCV, onnxruntime, tokenizers, scikit-image,
shapely, pyclipper, orjson, FastAPI/uvicorn). insightface and rapidocr are not installed: the
parts of them that Immich calls are copied below, verbatim where possible.

Pinned behaviour: Immich v2.4.1 (machine-learning/pyproject.toml version 2.4.1; immich_ml/main.py,
models/{clip,facial_recognition,ocr}/*.py, models/transforms.py, sessions/ort.py, config.py of that
release line), with insightface 0.7.3 (model_zoo/retinaface.py, model_zoo/arcface_onnx.py,
utils/face_align.py) and rapidocr 3.4.x (ch_ppocr_det/utils.py DBPostProcess, ch_ppocr_rec/main.py
TextRecognizer, ch_ppocr_rec/utils.py CTCLabelDecode). Every function below names what it copies.

Usage:
    reference.py --write-images DIR
        writes astronaut.jpg, coffee.jpg, text.png and preview.jpg into DIR and prints a JSON
        object {"astronaut": PATH, "coffee": PATH, "text": PATH, "preview": PATH}
    reference.py --models CACHE --batch-file cases.json
        cases.json: a JSON array of {"name": ..., "entries": {...} or "...", "image": PATH} or
        {"name": ..., "entries": ..., "text": "..."}. Prints a JSON array with one Immich
        response body per case, in order, each exactly as Immich's ORJSONResponse writes it.
        A case that Immich would answer with an error gives {"status": CODE, "detail": ...}.
    reference.py --models CACHE --serve [--host 127.0.0.1] [--port 3003]
        an Immich-like HTTP server (FastAPI in one uvicorn process, as Immich runs it):
        GET / -> {"message":"Immich ML"}, GET /ping -> pong, POST /predict (multipart: entries,
        then image (file) or text).

CACHE is an Immich model cache: <CACHE>/<task>/<modelName>/<type>/model.onnx (see make_models.py).
Logs go to stderr only; stdout carries only the JSON results.

Sessions: onnxruntime CPUExecutionProvider with Immich's CPU defaults (sessions/ort.py):
inter_op_num_threads=1, intra_op_num_threads=2, sequential execution, CPU memory arena on with
arena_extend_strategy=kSameAsRequested. Requests run in a thread pool of os.cpu_count() threads
(Immich's MACHINE_LEARNING_REQUEST_THREADS default) via run_in_executor; models load lazily, once,
under one lock. Unlike Immich, this never downloads models, never deletes a cache folder after a
failed load, and never rewrites the ArcFace model to add a batch axis (Immich does that in place
when the model's batch dim is not named "batch"; the numbers are the same).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import string
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import onnxruntime as ort
import orjson
from PIL import Image

log = logging.getLogger("immich-reference")

# ------------------------------------------------------------------ immich_ml/config.py, schemas.py

_clean_name = str.maketrans(":\\/", "___", ".")


def clean_name(model_name: str) -> str:
    """config.clean_name: the part after the last '/', ':' and '\\' -> '_', '.' deleted."""
    return model_name.split("/")[-1].translate(_clean_name)


REQUEST_THREADS = os.cpu_count() or 4  # settings.request_threads


class HTTPError(Exception):
    """What FastAPI's HTTPException carries: a status and a detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# ------------------------------------------------------------------ immich_ml/models/transforms.py

_PIL_RESAMPLING_METHODS = {resampling.name.lower(): resampling for resampling in Image.Resampling}
_PUNCTUATION_TRANS = str.maketrans("", "", string.punctuation)


def resize_pil(img: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    if img.width < img.height:
        return img.resize((size, int((img.height / img.width) * size)), resample=resample)
    return img.resize((int((img.width / img.height) * size), size), resample=resample)


def crop_pil(img: Image.Image, size: int) -> Image.Image:
    left = int((img.size[0] / 2) - (size / 2))
    upper = int((img.size[1] / 2) - (size / 2))
    right = left + size
    lower = upper + size
    return img.crop((left, upper, right, lower))


def to_numpy(img: Image.Image) -> np.ndarray:
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.float32) / 255.0


def normalize(img: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    return np.divide(img - mean, std, dtype=np.float32)


def get_pil_resampling(resample: str) -> Image.Resampling:
    return _PIL_RESAMPLING_METHODS[resample.lower()]


def pil_to_cv2(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.array(image), cv2.COLOR_RGB2BGR)


def decode_pil(image_bytes: bytes | Image.Image) -> Image.Image:
    """PIL open -> load -> RGB; no EXIF transpose (Immich sends an already oriented preview)."""
    image = image_bytes if isinstance(image_bytes, Image.Image) else Image.open(BytesIO(image_bytes))
    image.load()
    if not image.mode == "RGB":
        image = image.convert("RGB")
    return image


def decode_cv2(image: bytes | Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, bytes):
        image = decode_pil(image)
    if isinstance(image, Image.Image):
        return pil_to_cv2(image)
    return image


def clean_text(text: str, canonicalize: bool = False) -> str:
    text = " ".join(text.split())
    if canonicalize:
        text = text.translate(_PUNCTUATION_TRANS).lower()
    return text


def serialize_np_array(arr: np.ndarray) -> str:
    """Embeddings travel as a JSON string holding the array (orjson's numpy serialisation)."""
    return orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def dump_response(content: Any) -> bytes:
    """fastapi.responses.ORJSONResponse.render."""
    return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


# ------------------------------------------------------------------ immich_ml/sessions/ort.py


def make_session(model_path: Path) -> ort.InferenceSession:
    if not model_path.is_file():
        raise FileNotFoundError(f"Model file not found: {model_path}")
    sess_options = ort.SessionOptions()
    sess_options.enable_cpu_mem_arena = True  # settings.model_arena
    sess_options.inter_op_num_threads = 1  # CPU default when model_inter_op_threads == 0
    sess_options.intra_op_num_threads = 2  # CPU default when model_intra_op_threads == 0
    return ort.InferenceSession(
        model_path.as_posix(),
        sess_options=sess_options,
        providers=["CPUExecutionProvider"],
        provider_options=[{"arena_extend_strategy": "kSameAsRequested"}],
    )


# ------------------------------------------------------------------ immich_ml/models/base.py


class InferenceModel:
    depends: list[tuple[str, str]] = []
    identity: tuple[str, str]  # (type, task)

    def __init__(self, model_name: str, cache_root: Path, **model_kwargs: Any) -> None:
        self.model_name = clean_name(model_name)
        self.cache_dir = cache_root / self.identity[1] / self.model_name
        self.loaded = False
        self._load_lock = threading.Lock()

    @property
    def model_dir(self) -> Path:
        return self.cache_dir / self.identity[0]

    @property
    def model_path(self) -> Path:
        return self.model_dir / "model.onnx"

    def load(self) -> None:
        with self._load_lock:
            if self.loaded:
                return
            log.info(f"Loading {self.identity[0]} model '{self.model_name}' to memory")
            self.session = self._load()
            self.loaded = True

    def _load(self) -> ort.InferenceSession:
        return make_session(self.model_path)

    def configure(self, **kwargs: Any) -> None:
        pass

    def predict(self, *inputs: Any, **model_kwargs: Any) -> Any:
        self.load()
        if model_kwargs:
            self.configure(**model_kwargs)
        return self._predict(*inputs, **model_kwargs)

    def _predict(self, *inputs: Any, **model_kwargs: Any) -> Any:
        raise NotImplementedError


# ------------------------------------------------------------------ immich_ml/models/clip/visual.py


class OpenClipVisualEncoder(InferenceModel):
    identity = ("visual", "clip")

    def _load(self) -> ort.InferenceSession:
        self.preprocess_cfg = json.loads((self.model_dir / "preprocess_cfg.json").read_text(encoding="utf-8"))
        size = self.preprocess_cfg["size"]
        self.size = size[0] if isinstance(size, list) else size
        self.resampling = get_pil_resampling(self.preprocess_cfg["interpolation"])
        self.mean = np.array(self.preprocess_cfg["mean"], dtype=np.float32)
        self.std = np.array(self.preprocess_cfg["std"], dtype=np.float32)
        return super()._load()

    def transform(self, image: Image.Image) -> dict[str, np.ndarray]:
        if self.preprocess_cfg.get("resize_mode", "shortest") == "squash":
            image = image.resize((self.size, self.size), resample=self.resampling)
        else:
            image = crop_pil(resize_pil(image, self.size, self.resampling), self.size)
        image_np = normalize(to_numpy(image), self.mean, self.std)
        return {"image": np.expand_dims(image_np.transpose(2, 0, 1), 0)}

    def _predict(self, inputs: Image.Image | bytes, **_: Any) -> str:
        image = decode_pil(inputs)
        res: np.ndarray = self.session.run(None, self.transform(image))[0][0]
        return serialize_np_array(res)


# ------------------------------------------------------------------ immich_ml/models/clip/textual.py

# models/constants.py: the M-CLIP models (text side: input_ids + attention_mask)
_MCLIP_MODELS = {
    "LABSE-Vit-L-14",
    "XLM-Roberta-Large-Vit-B-32",
    "XLM-Roberta-Large-Vit-B-16Plus",
    "XLM-Roberta-Large-Vit-L-14",
}

# models/constants.py WEBLATE_TO_FLORES200, the entries a test may need; nllb models only
WEBLATE_TO_FLORES200 = {
    "de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "it": "ita_Latn",
    "ja": "jpn_Jpan", "ko": "kor_Hang", "nl": "nld_Latn", "pt": "por_Latn", "ru": "rus_Cyrl",
    "zh_Hans": "zho_Hans", "zh_Hant": "zho_Hant",
}


class OpenClipTextualEncoder(InferenceModel):
    identity = ("textual", "clip")

    def _load(self) -> ort.InferenceSession:
        from tokenizers import Tokenizer

        session = super()._load()
        model_cfg = json.loads((self.cache_dir / "config.json").read_text(encoding="utf-8"))
        self.text_cfg: dict[str, Any] = model_cfg["text_cfg"]
        tokenizer_cfg = json.loads((self.model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        context_length: int = self.text_cfg.get("context_length", 77)
        pad_token: str = tokenizer_cfg["pad_token"]
        tokenizer = Tokenizer.from_file((self.model_dir / "tokenizer.json").as_posix())
        pad_id = tokenizer.token_to_id(pad_token)
        tokenizer.enable_padding(length=context_length, pad_token=pad_token, pad_id=pad_id)
        tokenizer.enable_truncation(max_length=context_length)
        self.tokenizer = tokenizer
        tokenizer_kwargs = self.text_cfg.get("tokenizer_kwargs")
        self.canonicalize = tokenizer_kwargs is not None and tokenizer_kwargs.get("clean") == "canonicalize"
        self.is_nllb = self.model_name.startswith("nllb")
        return session

    def tokenize(self, text: str, language: str | None = None) -> dict[str, np.ndarray]:
        text = clean_text(text, canonicalize=self.canonicalize)
        if self.is_nllb and language is not None:
            flores_code = WEBLATE_TO_FLORES200.get(language)
            if flores_code is None:
                flores_code = WEBLATE_TO_FLORES200.get(language.split("-")[0], "eng_Latn")
            text = f"{flores_code}{text}"
        tokens = self.tokenizer.encode(text)
        return {"text": np.array([tokens.ids], dtype=np.int32)}

    def _predict(self, inputs: str, language: str | None = None, **_: Any) -> str:
        tokens = self.tokenize(inputs, language=language)
        res: np.ndarray = self.session.run(None, tokens)[0][0]
        return serialize_np_array(res)


class MClipTextualEncoder(OpenClipTextualEncoder):
    def tokenize(self, text: str, language: str | None = None) -> dict[str, np.ndarray]:
        text = clean_text(text, canonicalize=self.canonicalize)
        tokens = self.tokenizer.encode(text)
        return {
            "input_ids": np.array([tokens.ids], dtype=np.int32),
            "attention_mask": np.array([tokens.attention_mask], dtype=np.int32),
        }


# ------------------------------------------------------------------ insightface 0.7.3 model_zoo/retinaface.py


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    return np.stack([x1, y1, x2, y2], axis=-1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    preds = []
    for i in range(0, distance.shape[1], 2):
        px = points[:, i % 2] + distance[:, i]
        py = points[:, i % 2 + 1] + distance[:, i + 1]
        preds.append(px)
        preds.append(py)
    return np.stack(preds, axis=-1)


class RetinaFace:
    """insightface.model_zoo.RetinaFace (used by Immich for buffalo_l's SCRFD det_10g)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.center_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.nms_thresh = 0.4
        self.det_thresh = 0.5
        input_cfg = session.get_inputs()[0]
        input_shape = input_cfg.shape
        self.input_size = None if isinstance(input_shape[2], str) else tuple(input_shape[2:4][::-1])
        self.input_name = input_cfg.name
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_mean = 127.5
        self.input_std = 128.0
        self.use_kps = False
        self._num_anchors = 1
        n = len(self.output_names)
        if n == 6:
            self.fmc, self._feat_stride_fpn, self._num_anchors = 3, [8, 16, 32], 2
        elif n == 9:
            self.fmc, self._feat_stride_fpn, self._num_anchors, self.use_kps = 3, [8, 16, 32], 2, True
        elif n == 10:
            self.fmc, self._feat_stride_fpn, self._num_anchors = 5, [8, 16, 32, 64, 128], 1
        elif n == 15:
            self.fmc, self._feat_stride_fpn, self._num_anchors, self.use_kps = 5, [8, 16, 32, 64, 128], 1, True
        else:
            raise ValueError(f"unexpected number of detector outputs: {n}")

    def prepare(self, det_thresh: float | None = None, input_size: tuple[int, int] | None = None) -> None:
        if det_thresh is not None:
            self.det_thresh = det_thresh
        if input_size is not None and self.input_size is None:
            self.input_size = input_size

    def forward(self, img: np.ndarray, threshold: float) -> tuple[list, list, list]:
        scores_list, bboxes_list, kpss_list = [], [], []
        input_size = tuple(img.shape[0:2][::-1])
        blob = cv2.dnn.blobFromImage(
            img, 1.0 / self.input_std, input_size, (self.input_mean, self.input_mean, self.input_mean), swapRB=True
        )
        net_outs = self.session.run(self.output_names, {self.input_name: blob})
        input_height, input_width = blob.shape[2], blob.shape[3]
        fmc = self.fmc
        for idx, stride in enumerate(self._feat_stride_fpn):
            scores = net_outs[idx]
            bbox_preds = net_outs[idx + fmc] * stride
            if self.use_kps:
                kps_preds = net_outs[idx + fmc * 2] * stride
            height, width = input_height // stride, input_width // stride
            key = (height, width, stride)
            if key in self.center_cache:
                anchor_centers = self.center_cache[key]
            else:
                anchor_centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
                anchor_centers = (anchor_centers * stride).reshape((-1, 2))
                if self._num_anchors > 1:
                    anchor_centers = np.stack([anchor_centers] * self._num_anchors, axis=1).reshape((-1, 2))
                if len(self.center_cache) < 100:
                    self.center_cache[key] = anchor_centers
            pos_inds = np.where(scores >= threshold)[0]
            bboxes = distance2bbox(anchor_centers, bbox_preds)
            scores_list.append(scores[pos_inds])
            bboxes_list.append(bboxes[pos_inds])
            if self.use_kps:
                kpss = distance2kps(anchor_centers, kps_preds)
                kpss = kpss.reshape((kpss.shape[0], -1, 2))
                kpss_list.append(kpss[pos_inds])
        return scores_list, bboxes_list, kpss_list

    def detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        input_size = self.input_size
        assert input_size is not None
        im_ratio = float(img.shape[0]) / img.shape[1]
        model_ratio = float(input_size[1]) / input_size[0]
        if im_ratio > model_ratio:
            new_height = input_size[1]
            new_width = int(new_height / im_ratio)
        else:
            new_width = input_size[0]
            new_height = int(new_width * im_ratio)
        det_scale = float(new_height) / img.shape[0]
        resized_img = cv2.resize(img, (new_width, new_height))
        det_img = np.zeros((input_size[1], input_size[0], 3), dtype=np.uint8)
        det_img[:new_height, :new_width, :] = resized_img

        scores_list, bboxes_list, kpss_list = self.forward(det_img, self.det_thresh)

        scores = np.vstack(scores_list)
        scores_ravel = scores.ravel()
        order = scores_ravel.argsort()[::-1]
        bboxes = np.vstack(bboxes_list) / det_scale
        kpss = np.vstack(kpss_list) / det_scale if self.use_kps else None
        pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)
        pre_det = pre_det[order, :]
        keep = self.nms(pre_det)
        det = pre_det[keep, :]
        if kpss is not None:
            kpss = kpss[order, :, :]
            kpss = kpss[keep, :, :]
        return det, kpss

    def nms(self, dets: np.ndarray) -> list[int]:
        thresh = self.nms_thresh
        x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = scores.argsort()[::-1]
        keep = []
        while order.size > 0:
            i = order[0]
            keep.append(i)
            xx1 = np.maximum(x1[i], x1[order[1:]])
            yy1 = np.maximum(y1[i], y1[order[1:]])
            xx2 = np.minimum(x2[i], x2[order[1:]])
            yy2 = np.minimum(y2[i], y2[order[1:]])
            w = np.maximum(0.0, xx2 - xx1 + 1)
            h = np.maximum(0.0, yy2 - yy1 + 1)
            inter = w * h
            ovr = inter / (areas[i] + areas[order[1:]] - inter)
            inds = np.where(ovr <= thresh)[0]
            order = order[inds + 1]
        return keep


# ------------------------------------------------------------------ immich_ml/models/facial_recognition/detection.py


class FaceDetector(InferenceModel):
    identity = ("detection", "facial-recognition")

    def __init__(self, model_name: str, cache_root: Path, min_score: float = 0.7, **model_kwargs: Any) -> None:
        self.min_score = model_kwargs.pop("minScore", min_score)
        super().__init__(model_name, cache_root, **model_kwargs)

    def _load(self) -> ort.InferenceSession:
        session = make_session(self.model_path)
        self.model = RetinaFace(session)
        self.model.prepare(det_thresh=self.min_score, input_size=(640, 640))
        return session

    def configure(self, **kwargs: Any) -> None:
        self.model.det_thresh = kwargs.pop("minScore", self.model.det_thresh)

    def _predict(self, inputs: Image.Image, **_: Any) -> dict[str, Any]:
        image = decode_cv2(inputs)  # BGR, as insightface expects; its blobFromImage swaps back to RGB
        bboxes, landmarks = self.model.detect(image)
        return {
            "boxes": bboxes[:, :4].round(),
            "scores": bboxes[:, 4],
            "landmarks": landmarks,
        }


# ------------------------------------------------------------------ insightface 0.7.3 utils/face_align.py

ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def estimate_norm(lmk: np.ndarray, image_size: int = 112) -> np.ndarray:
    from skimage import transform as trans

    assert lmk.shape == (5, 2)
    assert image_size % 112 == 0 or image_size % 128 == 0
    if image_size % 112 == 0:
        ratio = float(image_size) / 112.0
        diff_x = 0.0
    else:
        ratio = float(image_size) / 128.0
        diff_x = 8.0 * ratio
    dst = ARCFACE_DST * ratio
    dst[:, 0] += diff_x
    tform = trans.SimilarityTransform()
    tform.estimate(lmk, dst)
    return tform.params[0:2, :]


def norm_crop(img: np.ndarray, landmark: np.ndarray, image_size: int = 112) -> np.ndarray:
    M = estimate_norm(landmark, image_size)
    return cv2.warpAffine(img, M, (image_size, image_size), borderValue=0.0)


# ------------------------------------------------------------------ immich_ml/models/facial_recognition/recognition.py


class FaceRecognizer(InferenceModel):
    identity = ("recognition", "facial-recognition")
    depends = [("detection", "facial-recognition")]

    def _load(self) -> ort.InferenceSession:
        # insightface ArcFaceONNX: a graph whose first nodes are named Sub*/_minus* and Mul*/_mul*
        # normalises in-graph (mxnet export): then mean 0, std 1; otherwise 127.5 / 127.5
        import onnx

        session = make_session(self.model_path)
        graph = onnx.load(self.model_path.as_posix(), load_external_data=False).graph
        find_sub = any(n.name.startswith("Sub") or n.name.startswith("_minus") for n in graph.node[:8])
        find_mul = any(n.name.startswith("Mul") or n.name.startswith("_mul") for n in graph.node[:8])
        self.input_mean, self.input_std = (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)
        input_cfg = session.get_inputs()[0]
        self.input_size = tuple(input_cfg.shape[2:4][::-1])
        self.input_name = input_cfg.name
        self.output_names = [o.name for o in session.get_outputs()]
        # Immich rewrites a model whose batch dim is fixed; with a fixed 1 this runs face by face
        self.batched = not (isinstance(input_cfg.shape[0], int) and input_cfg.shape[0] == 1)
        return session

    def get_feat(self, imgs: list[np.ndarray]) -> np.ndarray:
        """ArcFaceONNX.get_feat."""
        blob = cv2.dnn.blobFromImages(
            imgs, 1.0 / self.input_std, self.input_size, (self.input_mean, self.input_mean, self.input_mean), swapRB=True
        )
        return self.session.run(self.output_names, {self.input_name: blob})[0]

    def _predict(self, inputs: Image.Image, faces: dict[str, Any], **_: Any) -> list[dict[str, Any]]:
        if faces["boxes"].shape[0] == 0:
            return []
        image = decode_cv2(inputs)
        cropped_faces = [norm_crop(image, landmark) for landmark in faces["landmarks"]]
        if self.batched:
            embeddings = self.get_feat(cropped_faces)
        else:
            embeddings = np.concatenate([self.get_feat([face]) for face in cropped_faces], axis=0)
        return [
            {
                "boundingBox": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                "embedding": serialize_np_array(embedding),
                "score": score,
            }
            for (x1, y1, x2, y2), embedding, score in zip(faces["boxes"], embeddings, faces["scores"])
        ]


# ------------------------------------------------------------------ rapidocr 3.4.x ch_ppocr_det/utils.py


class DBPostProcess:
    """The post process for Differentiable Binarization (DB), rapidocr's copy of PaddleOCR's."""

    def __init__(
        self,
        thresh: float = 0.3,
        box_thresh: float = 0.7,
        max_candidates: int = 1000,
        unclip_ratio: float = 2.0,
        score_mode: str = "fast",
        use_dilation: bool = False,
    ) -> None:
        self.thresh = thresh
        self.box_thresh = box_thresh
        self.max_candidates = max_candidates
        self.unclip_ratio = unclip_ratio
        self.min_size = 3
        self.score_mode = score_mode
        self.dilation_kernel = None
        if use_dilation:
            self.dilation_kernel = np.array([[1, 1], [1, 1]])

    def __call__(self, pred: np.ndarray, ori_shape: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
        src_h, src_w = ori_shape
        pred = pred[:, 0, :, :]
        segmentation = pred > self.thresh
        mask = segmentation[0]
        if self.dilation_kernel is not None:
            mask = cv2.dilate(np.array(segmentation[0]).astype(np.uint8), self.dilation_kernel)
        boxes, scores = self.boxes_from_bitmap(pred[0], mask, src_w, src_h)
        boxes, scores = self.filter_det_res(boxes, scores, src_h, src_w)
        return boxes, scores

    def boxes_from_bitmap(
        self, pred: np.ndarray, bitmap: np.ndarray, dest_width: int, dest_height: int
    ) -> tuple[np.ndarray, list[float]]:
        height, width = bitmap.shape
        outs = cv2.findContours((bitmap * 255).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        contours = outs[1] if len(outs) == 3 else outs[0]
        num_contours = min(len(contours), self.max_candidates)
        boxes, scores = [], []
        for index in range(num_contours):
            contour = contours[index]
            points, sside = self.get_mini_boxes(contour)
            if sside < self.min_size:
                continue
            if self.score_mode == "fast":
                score = self.box_score_fast(pred, points.reshape(-1, 2))
            else:
                score = self.box_score_slow(pred, contour)
            if self.box_thresh > score:
                continue
            box = self.unclip(points)
            box, sside = self.get_mini_boxes(box)
            if sside < self.min_size + 2:
                continue
            box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_width), 0, dest_width)
            box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_height), 0, dest_height)
            boxes.append(box.astype(np.int32))
            scores.append(score)
        return np.array(boxes, dtype=np.int32), scores

    def get_mini_boxes(self, contour: np.ndarray) -> tuple[np.ndarray, float]:
        bounding_box = cv2.minAreaRect(contour)
        points = sorted(list(cv2.boxPoints(bounding_box)), key=lambda x: x[0])
        if points[1][1] > points[0][1]:
            index_1, index_4 = 0, 1
        else:
            index_1, index_4 = 1, 0
        if points[3][1] > points[2][1]:
            index_2, index_3 = 2, 3
        else:
            index_2, index_3 = 3, 2
        box = np.array([points[index_1], points[index_2], points[index_3], points[index_4]])
        return box, min(bounding_box[1])

    @staticmethod
    def box_score_fast(bitmap: np.ndarray, _box: np.ndarray) -> float:
        h, w = bitmap.shape[:2]
        box = _box.copy()
        xmin = np.clip(np.floor(box[:, 0].min()).astype(np.int32), 0, w - 1)
        xmax = np.clip(np.ceil(box[:, 0].max()).astype(np.int32), 0, w - 1)
        ymin = np.clip(np.floor(box[:, 1].min()).astype(np.int32), 0, h - 1)
        ymax = np.clip(np.ceil(box[:, 1].max()).astype(np.int32), 0, h - 1)
        mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
        box[:, 0] = box[:, 0] - xmin
        box[:, 1] = box[:, 1] - ymin
        cv2.fillPoly(mask, box.reshape(1, -1, 2).astype(np.int32), 1)
        return cv2.mean(bitmap[ymin : ymax + 1, xmin : xmax + 1], mask)[0]

    def box_score_slow(self, bitmap: np.ndarray, contour: np.ndarray) -> float:
        h, w = bitmap.shape[:2]
        contour = np.reshape(contour.copy(), (-1, 2))
        xmin = np.clip(np.min(contour[:, 0]), 0, w - 1)
        xmax = np.clip(np.max(contour[:, 0]), 0, w - 1)
        ymin = np.clip(np.min(contour[:, 1]), 0, h - 1)
        ymax = np.clip(np.max(contour[:, 1]), 0, h - 1)
        mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
        contour[:, 0] = contour[:, 0] - xmin
        contour[:, 1] = contour[:, 1] - ymin
        cv2.fillPoly(mask, contour.reshape(1, -1, 2).astype(np.int32), 1)
        return cv2.mean(bitmap[ymin : ymax + 1, xmin : xmax + 1], mask)[0]

    def unclip(self, box: np.ndarray) -> np.ndarray:
        import pyclipper
        from shapely.geometry import Polygon

        poly = Polygon(box)
        distance = poly.area * self.unclip_ratio / poly.length
        offset = pyclipper.PyclipperOffset()
        offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        return np.array(offset.Execute(distance)).reshape((-1, 1, 2))

    def filter_det_res(
        self, dt_boxes: np.ndarray, scores: list[float], img_height: int, img_width: int
    ) -> tuple[np.ndarray, list[float]]:
        dt_boxes_new, new_scores = [], []
        for box, score in zip(dt_boxes, scores):
            box = self.order_points_clockwise(box)
            box = self.clip_det_res(box, img_height, img_width)
            rect_width = int(np.linalg.norm(box[0] - box[1]))
            rect_height = int(np.linalg.norm(box[0] - box[3]))
            if rect_width <= 3 or rect_height <= 3:
                continue
            dt_boxes_new.append(box)
            new_scores.append(score)
        return np.array(dt_boxes_new), new_scores

    def order_points_clockwise(self, pts: np.ndarray) -> np.ndarray:
        xSorted = pts[np.argsort(pts[:, 0]), :]
        leftMost = xSorted[:2, :]
        rightMost = xSorted[2:, :]
        leftMost = leftMost[np.argsort(leftMost[:, 1]), :]
        (tl, bl) = leftMost
        rightMost = rightMost[np.argsort(rightMost[:, 1]), :]
        (tr, br) = rightMost
        return np.array([tl, tr, br, bl], dtype="float32")

    def clip_det_res(self, points: np.ndarray, img_height: int, img_width: int) -> np.ndarray:
        for pno in range(points.shape[0]):
            points[pno, 0] = int(min(max(points[pno, 0], 0), img_width - 1))
            points[pno, 1] = int(min(max(points[pno, 1], 0), img_height - 1))
        return points


# ------------------------------------------------------------------ immich_ml/models/ocr/detection.py


class TextDetector(InferenceModel):
    identity = ("detection", "ocr")

    def __init__(self, model_name: str, cache_root: Path, **model_kwargs: Any) -> None:
        super().__init__(model_name.split("__")[-1], cache_root, **model_kwargs)
        self.max_resolution = 736
        # Immich's own normalisation, NOT RapidOCR's (x/255 - 0.5)/0.5: mean 0.5 is subtracted from
        # 0..255 pixel values and the result divided by 0.5*255, so the model sees (x - 0.5)/127.5
        self.mean = np.array([0.5, 0.5, 0.5], dtype=np.float32)
        self.std_inv = np.float32(1.0) / (np.array([0.5, 0.5, 0.5], dtype=np.float32) * 255.0)
        self._empty = {"boxes": np.empty(0, dtype=np.float32), "scores": np.empty(0, dtype=np.float32)}
        self.postprocess = DBPostProcess(
            thresh=0.3,
            box_thresh=model_kwargs.get("minScore", 0.5),
            max_candidates=1000,
            unclip_ratio=1.6,
            use_dilation=True,
            score_mode="fast",
        )

    def _predict(self, inputs: Image.Image, **_: Any) -> dict[str, np.ndarray]:
        w, h = inputs.size
        if w < 32 or h < 32:
            return self._empty
        out = self.session.run(None, {"x": self._transform(inputs)})[0]
        boxes, scores = self.postprocess(out, (h, w))
        if len(boxes) == 0:
            return self._empty
        return {"boxes": self.sorted_boxes(boxes), "scores": np.array(scores, dtype=np.float32)}

    def _transform(self, img: Image.Image) -> np.ndarray:
        if img.height < img.width:
            ratio = float(self.max_resolution) / img.height
        else:
            ratio = float(self.max_resolution) / img.width
        ratio = min(ratio, 1.0)  # never enlarges
        resize_h = int(img.height * ratio)
        resize_w = int(img.width * ratio)
        resize_h = int(round(resize_h / 32) * 32)  # Python's round: half to even
        resize_w = int(round(resize_w / 32) * 32)
        resized_img = img.resize((int(resize_w), int(resize_h)), resample=Image.Resampling.LANCZOS)
        img_np = cv2.cvtColor(np.array(resized_img, dtype=np.float32), cv2.COLOR_RGB2BGR)  # the model reads BGR
        img_np -= self.mean
        img_np *= self.std_inv
        img_np = np.transpose(img_np, (2, 0, 1))
        return np.expand_dims(img_np, axis=0)

    @staticmethod
    def sorted_boxes(dt_boxes: np.ndarray) -> np.ndarray:
        """Immich's own box order (not RapidOCR's), copied with its quirk: line_ids is computed in
        y order but then indexed again by y_order, so lines come out in a permuted order that
        depends on the order DBPostProcess found the boxes (cv2.findContours' order: usually the
        lowest line first). Within a line, boxes are ordered by their first corner's x."""
        if len(dt_boxes) == 0:
            return dt_boxes
        y_order = np.argsort(dt_boxes[:, 0, 1], kind="stable")
        sorted_y = dt_boxes[y_order, 0, 1]
        line_ids = np.empty(len(dt_boxes), dtype=np.int32)
        line_ids[0] = 0
        np.cumsum(np.abs(np.diff(sorted_y)) >= 10, out=line_ids[1:])
        sort_key = line_ids[y_order] * 1e6 + dt_boxes[y_order, 0, 0]
        final_order = np.argsort(sort_key, kind="stable")
        return dt_boxes[y_order[final_order]]

    def configure(self, **kwargs: Any) -> None:
        if (max_resolution := kwargs.get("maxResolution")) is not None:
            self.max_resolution = max_resolution
        if (min_score := kwargs.get("minScore")) is not None:
            self.postprocess.box_thresh = min_score
        if (score_mode := kwargs.get("scoreMode")) is not None:
            self.postprocess.score_mode = score_mode


# ------------------------------------------------------------------ rapidocr 3.4.x ch_ppocr_rec/utils.py


class CTCLabelDecode:
    def __init__(self, character: list[str]) -> None:
        self.character = ["blank"] + list(character) + [" "]

    def __call__(self, preds: np.ndarray) -> list[tuple[str, float]]:
        preds_idx = preds.argmax(axis=2)
        preds_prob = preds.max(axis=2)
        result_list = []
        for batch_idx in range(len(preds_idx)):
            token_indices = preds_idx[batch_idx]
            selection = np.ones(len(token_indices), dtype=bool)
            selection[1:] = token_indices[1:] != token_indices[:-1]  # remove_duplicate=True
            selection &= token_indices != 0  # the CTC blank
            conf_list = np.array(preds_prob[batch_idx][selection]).tolist()
            conf_list = [round(conf, 5) for conf in conf_list]
            if len(conf_list) == 0:
                conf_list = [0]
            text = "".join(self.character[text_id] for text_id in token_indices[selection])
            result_list.append((text, np.mean(conf_list).round(5).tolist()))
        return result_list


def read_character_file(path: Path) -> list[str]:
    """rapidocr CTCLabelDecode.read_character_file."""
    character_list = []
    with open(path, "rb") as f:
        for line in f.readlines():
            character_list.append(line.decode("utf-8").strip("\n").strip("\r\n"))
    return character_list


# ------------------------------------------------------------------ immich_ml/models/ocr/recognition.py + rapidocr TextRecognizer


class TextRecognizer(InferenceModel):
    identity = ("recognition", "ocr")
    depends = [("detection", "ocr")]
    rec_batch_num = 6  # Immich passes settings.max_batch_size.text_recognition, default 6
    rec_img_shape = (3, 48, 320)

    def __init__(self, model_name: str, cache_root: Path, **model_kwargs: Any) -> None:
        self.min_score = model_kwargs.get("minScore", 0.9)
        self._empty = {
            "box": np.empty(0, dtype=np.float32),
            "boxScore": np.empty(0, dtype=np.float32),
            "text": [],
            "textScore": np.empty(0, dtype=np.float32),
        }
        super().__init__(model_name, cache_root, **model_kwargs)

    def _load(self) -> ort.InferenceSession:
        session = make_session(self.model_path)
        meta = session.get_modelmeta().custom_metadata_map
        if "character" in meta:  # rapidocr OrtInferSession.get_character_list
            character = meta["character"].splitlines()
        else:  # rapidocr falls back to a dictionary file
            character = read_character_file(self.model_dir / "ppocrv5_dict.txt")
        self.decode = CTCLabelDecode(character)
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        return session

    def configure(self, **kwargs: Any) -> None:
        self.min_score = kwargs.get("minScore", self.min_score)

    def _predict(self, img: Image.Image, texts: dict[str, np.ndarray], **_: Any) -> dict[str, Any]:
        boxes, box_scores = texts["boxes"], texts["scores"]
        if boxes.shape[0] == 0:
            return self._empty
        txts, scores = self.recognize(self.get_crop_img_list(img, boxes))

        boxes[:, :, 0] /= img.width
        boxes[:, :, 1] /= img.height

        text_scores = np.array(scores)
        valid_text_score_idx = text_scores > self.min_score
        valid_score_idx_list = valid_text_score_idx.tolist()
        return {
            "box": boxes.reshape(-1, 8)[valid_text_score_idx].reshape(-1),
            "text": [txts[i] for i in range(len(txts)) if valid_score_idx_list[i]],
            "boxScore": box_scores[valid_text_score_idx],
            "textScore": text_scores[valid_text_score_idx],
        }

    def get_crop_img_list(self, img: Image.Image, boxes: np.ndarray) -> list[np.ndarray]:
        img_crop_width = np.maximum(
            np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1), np.linalg.norm(boxes[:, 2] - boxes[:, 3], axis=1)
        ).astype(np.int32)
        img_crop_height = np.maximum(
            np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1), np.linalg.norm(boxes[:, 1] - boxes[:, 2], axis=1)
        ).astype(np.int32)
        pts_std = np.zeros((img_crop_width.shape[0], 4, 2), dtype=np.float32)
        pts_std[:, 1:3, 0] = img_crop_width[:, None]
        pts_std[:, 2:4, 1] = img_crop_height[:, None]

        img_crop_sizes = np.stack([img_crop_width, img_crop_height], axis=1)
        all_coeffs = self._get_perspective_transform(pts_std, boxes)
        imgs: list[np.ndarray] = []
        for coeffs, dst_size in zip(all_coeffs, img_crop_sizes):
            dst_img = img.transform(
                size=tuple(dst_size),
                method=Image.Transform.PERSPECTIVE,
                data=tuple(coeffs),
                resample=Image.Resampling.BICUBIC,
            )
            dst_width, dst_height = dst_img.size
            if dst_height * 1.0 / dst_width >= 1.5:
                dst_img = dst_img.rotate(90, expand=True)
            imgs.append(pil_to_cv2(dst_img))
        return imgs

    @staticmethod
    def _get_perspective_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        N = src.shape[0]
        x, y = src[:, :, 0], src[:, :, 1]
        u, v = dst[:, :, 0], dst[:, :, 1]
        A = np.zeros((N, 8, 9), dtype=np.float32)
        A[:, ::2, 0] = x
        A[:, ::2, 1] = y
        A[:, ::2, 2] = 1
        A[:, ::2, 6] = -u * x
        A[:, ::2, 7] = -u * y
        A[:, ::2, 8] = -u
        A[:, 1::2, 3] = x
        A[:, 1::2, 4] = y
        A[:, 1::2, 5] = 1
        A[:, 1::2, 6] = -v * x
        A[:, 1::2, 7] = -v * y
        A[:, 1::2, 8] = -v
        _, _, Vt = np.linalg.svd(A)
        H = Vt[:, -1, :].reshape(N, 3, 3)
        H = H / H[:, 2:3, 2:3]
        return np.column_stack(
            [H[:, 0, 0], H[:, 0, 1], H[:, 0, 2], H[:, 1, 0], H[:, 1, 1], H[:, 1, 2], H[:, 2, 0], H[:, 2, 1]]
        )

    def recognize(self, img_list: list[np.ndarray]) -> tuple[list[str], list[float]]:
        """rapidocr TextRecognizer.__call__: batches of 6 in order of width/height ratio, each
        padded to the widest in its batch (at least 320 = 48 * 320/48)."""
        width_list = [img.shape[1] / float(img.shape[0]) for img in img_list]
        indices = np.argsort(np.array(width_list))
        img_num = len(img_list)
        rec_res: list[tuple[str, float]] = [("", 0.0)] * img_num
        batch_num = self.rec_batch_num
        for beg_img_no in range(0, img_num, batch_num):
            end_img_no = min(img_num, beg_img_no + batch_num)
            imgC, imgH, imgW = self.rec_img_shape[:3]
            max_wh_ratio = imgW / imgH
            for ino in range(beg_img_no, end_img_no):
                h, w = img_list[indices[ino]].shape[0:2]
                max_wh_ratio = max(max_wh_ratio, w * 1.0 / h)
            norm_img_batch = []
            for ino in range(beg_img_no, end_img_no):
                norm_img = self.resize_norm_img(img_list[indices[ino]], max_wh_ratio)
                norm_img_batch.append(norm_img[np.newaxis, :])
            batch = np.concatenate(norm_img_batch).astype(np.float32)
            preds = self.session.run([self.output_name], {self.input_name: batch})[0]
            for rno, one_res in enumerate(self.decode(preds)):
                rec_res[indices[beg_img_no + rno]] = one_res
        txts, scores = zip(*rec_res)
        return list(txts), list(scores)

    def resize_norm_img(self, img: np.ndarray, max_wh_ratio: float) -> np.ndarray:
        img_channel, img_height, img_width = self.rec_img_shape
        assert img_channel == img.shape[2]
        img_width = int(img_height * max_wh_ratio)
        h, w = img.shape[:2]
        ratio = w / float(h)
        if math.ceil(img_height * ratio) > img_width:
            resized_w = img_width
        else:
            resized_w = int(math.ceil(img_height * ratio))
        resized_image = cv2.resize(img, (resized_w, img_height))
        resized_image = resized_image.astype("float32")
        resized_image = resized_image.transpose((2, 0, 1)) / 255
        resized_image -= 0.5
        resized_image /= 0.5
        padding_im = np.zeros((img_channel, img_height, img_width), dtype=np.float32)
        padding_im[:, :, 0:resized_w] = resized_image
        return padding_im


# ------------------------------------------------------------------ immich_ml/models/__init__.py, models/cache.py


def get_model_class(model_name: str, model_type: str, model_task: str) -> type[InferenceModel]:
    match model_task, model_type:
        case "clip", "visual":
            return OpenClipVisualEncoder
        case "clip", "textual":
            return MClipTextualEncoder if clean_name(model_name) in _MCLIP_MODELS else OpenClipTextualEncoder
        case "facial-recognition", "detection":
            return FaceDetector
        case "facial-recognition", "recognition":
            return FaceRecognizer
        case "ocr", "detection":
            return TextDetector
        case "ocr", "recognition":
            return TextRecognizer
        case _:
            # Immich raises ValueError here, outside any handler: a 500
            raise ValueError(f"Unknown model combination: {model_task}, {model_type}")


class ModelCache:
    """One instance per (name, type, task), made with the options of the first request that
    names it; later requests only configure() it (models/cache.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, InferenceModel] = {}
        self.lock = threading.Lock()

    def get(self, model_name: str, model_type: str, model_task: str, **model_kwargs: Any) -> InferenceModel:
        key = f"{model_name}{model_type}{model_task}"
        with self.lock:
            model = self.models.get(key)
            if model is None:
                cls = get_model_class(model_name, model_type, model_task)
                model = cls(model_name, self.root, **model_kwargs)
                self.models[key] = model
        return model


# ------------------------------------------------------------------ immich_ml/main.py


def get_entries(entries: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """main.get_entries; entries is the form field's string (or, in batch files, already parsed)."""
    try:
        request = orjson.loads(entries) if isinstance(entries, (str, bytes)) else entries
        without_deps: list[dict[str, Any]] = []
        with_deps: list[dict[str, Any]] = []
        for task, types in request.items():
            for type_, entry in types.items():
                parsed = {
                    "name": entry["modelName"],
                    "task": task,
                    "type": type_,
                    "options": entry.get("options", {}),
                }
                dep = get_model_class(parsed["name"], type_, task).depends
                (with_deps if dep else without_deps).append(parsed)
        return without_deps, with_deps
    except (orjson.JSONDecodeError, KeyError, AttributeError) as e:  # Immich's list; others are a 500
        log.error(f"Invalid request format: {e}")
        raise HTTPError(422, "Invalid request format.")


class Server:
    def __init__(self, models: Path, threads: int = REQUEST_THREADS) -> None:
        self.model_cache = ModelCache(models)
        self.thread_pool = ThreadPoolExecutor(threads)
        self.lock = threading.Lock()

    async def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread_pool, partial(func, *args, **kwargs))

    async def load(self, model: InferenceModel) -> InferenceModel:
        if model.loaded:
            return model

        def _load(model: InferenceModel) -> InferenceModel:
            with self.lock:
                try:
                    model.load()
                except Exception as e:  # Immich: a second failed attempt is a 500 with this message
                    log.warning(f"Failed to load {model.identity[0]} model '{model.model_name}': {e}")
                    raise HTTPError(500, f"Failed to load model '{model.model_name}'")
            return model

        return await self.run(_load, model)

    async def run_inference(self, payload: Image.Image | str, entries: tuple[list, list]) -> dict[str, Any]:
        outputs: dict[tuple[str, str], Any] = {}
        response: dict[str, Any] = {}

        async def _run_inference(entry: dict[str, Any]) -> None:
            model = self.model_cache.get(entry["name"], entry["type"], entry["task"], **entry["options"])
            inputs: list[Any] = [payload]
            for dep in model.depends:
                try:
                    inputs.append(outputs[dep])
                except KeyError:
                    message = f"Task {entry['task']} of type {entry['type']} depends on output of {dep}"
                    raise HTTPError(400, message)
            model = await self.load(model)
            output = await self.run(model.predict, *inputs, **entry["options"])
            outputs[model.identity] = output
            response[entry["task"]] = output

        without_deps, with_deps = entries
        await asyncio.gather(*[_run_inference(entry) for entry in without_deps])
        if with_deps:
            await asyncio.gather(*[_run_inference(entry) for entry in with_deps])
        if isinstance(payload, Image.Image):
            response["imageHeight"], response["imageWidth"] = payload.height, payload.width
        return response

    async def predict(self, entries: Any, image: bytes | None, text: str | None) -> dict[str, Any]:
        parsed = get_entries(entries)
        if image is not None:
            inputs: Image.Image | str = await self.run(decode_pil, image)
        elif text is not None:
            inputs = text
        else:
            raise HTTPError(400, "Either image or text must be provided")
        return await self.run_inference(inputs, parsed)


# ------------------------------------------------------------------ modes


def batch(models: Path, cases_path: Path) -> int:
    cases = json.loads(cases_path.read_text(encoding="utf-8"))
    server = Server(models)

    async def run_all() -> list[bytes]:
        bodies: list[bytes] = []
        for case in cases:
            image = Path(case["image"]).read_bytes() if case.get("image") is not None else None
            try:
                response = await server.predict(case.get("entries"), image, case.get("text"))
                bodies.append(dump_response(response))
            except HTTPError as e:
                log.warning(f"case {case.get('name')!r}: {e.status} {e.detail}")
                bodies.append(dump_response({"status": e.status, "detail": e.detail}))
            except Exception as e:  # Immich: an unhandled exception, 500 Internal Server Error
                log.exception(f"case {case.get('name')!r} failed")
                bodies.append(dump_response({"status": 500, "detail": f"{type(e).__name__}: {e}"}))
        return bodies

    bodies = asyncio.run(run_all())
    server.thread_pool.shutdown()
    sys.stdout.buffer.write(b"[" + b",\n".join(bodies) + b"]\n")
    sys.stdout.flush()
    return 0


def make_app(models: Path) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, File, Form, HTTPException
    from fastapi.responses import ORJSONResponse, PlainTextResponse
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = 2**26  # as Immich: spools to disk from 64 MiB
    server: Server | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        nonlocal server
        server = Server(models)
        log.info(f"Initialized request thread pool with {REQUEST_THREADS} threads.")
        yield
        server.thread_pool.shutdown()

    def entries_form(entries: str = Form()) -> str:
        return entries

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def root() -> ORJSONResponse:
        return ORJSONResponse({"message": "Immich ML"})

    @app.get("/ping")
    def ping() -> PlainTextResponse:
        return PlainTextResponse("pong")

    @app.post("/predict")
    async def predict(
        entries: str = Depends(entries_form),
        image: bytes | None = File(default=None),
        text: str | None = Form(default=None),
    ) -> Any:
        assert server is not None
        try:
            response = await server.predict(entries, image, text)
        except HTTPError as e:
            raise HTTPException(e.status, e.detail)
        return ORJSONResponse(response)

    return app


def serve(models: Path, host: str, port: int) -> int:
    import uvicorn

    log_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
    uvicorn.run(make_app(models), host=host, port=port, workers=1, log_config=log_config)
    return 0


def write_images(out: Path) -> int:
    from PIL import ImageDraw, ImageFont
    from skimage import data

    out.mkdir(parents=True, exist_ok=True)
    paths = {}

    astronaut = Image.fromarray(data.astronaut())  # 512x512 RGB, one face
    paths["astronaut"] = out / "astronaut.jpg"
    astronaut.save(paths["astronaut"], format="JPEG", quality=95)

    coffee = Image.fromarray(data.coffee())  # 600x400 RGB, no face
    paths["coffee"] = out / "coffee.jpg"
    coffee.save(paths["coffee"], format="JPEG", quality=95)

    # large black words on white, in Pillow's bundled font (FreeType "Aileron")
    lines = TEXT_LINES
    font = ImageFont.load_default(size=48)
    canvas = Image.new("RGB", (960, 96 + 80 * len(lines)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((48, 48 + 80 * i), line, fill="black", font=font)
    paths["text"] = out / "text.png"
    canvas.save(paths["text"], format="PNG")

    # Immich's default preview is a 1440 px JPEG; an upscale of skimage's chelsea (451x300)
    chelsea = Image.fromarray(data.chelsea())
    preview = chelsea.resize((1440, round(1440 * chelsea.height / chelsea.width)), resample=Image.Resampling.LANCZOS)
    paths["preview"] = out / "preview.jpg"
    preview.save(paths["preview"], format="JPEG", quality=80)

    print(json.dumps({name: str(path) for name, path in paths.items()}))
    return 0


# the lines drawn into text.png, which PP-OCRv5 mobile reads back exactly
TEXT_LINES = ["HELLO WORLD", "Immich photos", "machine learning"]


def main() -> int:
    parser = argparse.ArgumentParser(description="Reference implementation of Immich's ML server (v2.4.1).")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-images", type=Path, metavar="DIR", help="write the test images into DIR")
    mode.add_argument("--batch-file", type=Path, metavar="CASES", help="answer each case of a JSON array")
    mode.add_argument("--serve", action="store_true", help="serve Immich's HTTP API")
    parser.add_argument("--models", type=Path, metavar="CACHE", help="the Immich model cache")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3003)
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.write_images is not None:
        return write_images(args.write_images)
    if args.models is None:
        parser.error("--models is required with --batch-file and --serve")
    if args.batch_file is not None:
        return batch(args.models, args.batch_file)
    return serve(args.models, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
