"""FEMNIST (LEAF; Caldas et al. 2018) from LEAF's gzipped JSON: one natural client per writer.

Layout under the data directory: ``femnist/<source>/{train,test}/all_data_<k>_..._{train,test}_9
.json.gz`` (``<source>`` is a folder per LEAF run; a flat ``femnist/{train,test}/`` also works).
Each file is ``{"users": [..], "num_samples": [..], "user_data": {w: {"x": [[784]], "y": [..]}}}``.
A writer's test samples come from the test file of the same shard. A writer present in several
sources (different LEAF runs split it differently) is kept only from the first source in sorted
order, so no writer's samples are counted twice.

Checksums: LEAF builds FEMNIST locally by random sampling, so there is no single published file;
the files of the subset shipped with fedkit's test data are verified against their SHA-256s below,
and any other LEAF output is accepted and keyed in the cache by its own SHA-256.

Output: ``x`` float32 ``(N, 1, 28, 28)`` exactly as LEAF stores it, values k/255 in [0, 1] with a
white (1.0) background, as LEAF's CNN is trained; ``invert=True`` gives MNIST's convention
(``1 - x``). ``y`` int64 in 0..61 (10 digits, 26 upper-case, 26 lower-case). ``client`` is the
writer index into ``client_names`` (writer ids, sorted).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.data.datasets.base import (
    CommonOptions,
    Dataset,
    DatasetNotFoundError,
    FedkitDataError,
    Split,
    parse_options,
)
from fedkit.data.datasets.cache import cache_key, cached
from fedkit.data.datasets.files import file_digest, verify_file

__all__ = ["FemnistOptions", "femnist_files", "load_femnist", "read_leaf_json"]

_VERSION = 1
_NUM_CLASSES = 62
_SHARD = re.compile(r"all_data_(\d+)_")

_KNOWN_SHA256: dict[str, dict[str, str]] = {
    "arakotom+flic": {
        "test/0": "864025e85c33cbccdb49bd949d2cb8e9053b7bac9447d23ab68b9c54051b71de",
        "test/1": "9b841d70be042610141e47b7853d428a76935c4483ea33d2cd8444bb973825a9",
        "test/2": "bba4d3337cc278991ddc6ebcca8a3b2cd61fc5201441fcf7c9af59a9ba439305",
        "test/3": "fe3bee67f730ae596133850c0023e60369ea61d071c548908ac1383fdfe09759",
        "test/4": "51d83ce2225b96bc0be0443328a929c3e9dd1035a7902dd8ed41e2429fce2e90",
        "test/5": "7548e0972758415213934a46c5ecc45156c13cc0085d4883193993c2cd215eeb",
        "test/6": "d0b44512e4a9c713ac0ae33953c3745817a4bbd193334a1ed7245b19e34e5ae9",
        "test/7": "7e66298023fb9d6920a0aa298d70ac683e9c116365183c8cf5e89e6542d2babc",
        "test/8": "591649272df88af67238844ed576776e8f738c574f8eaf1efbe5cedef22de061",
        "test/9": "45b3ddb66971421e7e349141070a04c7d3cc99e9d0b4ffca7340387327c7bd70",
        "test/10": "bc9a53cc24f825c8b252b5e4a18701bb1709f0e315010f2d480a78c5a2983a15",
        "test/16": "e1e958c33d5e1c41333d75a8d3c6c32393d0caaaf7a62d488e321ad34df4f8ea",
        "test/17": "fc6c1685016c08296270d738fadcb6b9c0dd9e15720803bc8af26a28d0bb6677",
        "test/18": "556fc9fb04614302948a1e1f6d85ca2bcce6703568d80c85633eb9b96ca0bc71",
        "test/19": "fbd3c841fa90f08a4f0d1dbe8544c10cbff5c4b1714d16a7212cbb5dbe5824a0",
        "test/20": "c81d58b1392f72aa91e4de39a50af58cd67f0a7a1b58357e9fc19c4086f464c1",
        "test/27": "17855130da8fe25e5acd76e4b4d4c2717822a82e2dd88c444370413e32b5782d",
        "test/28": "1eda5e2f0691ca4e39464c0bada096caf1d63b40304cc504155e81d1ccc4d09e",
        "test/29": "dd034bc670b245c854a64a2d606b9650b9d2ee1bfe0e03786e3026231aaa30fd",
        "test/30": "694992596261398872ebc2aba564124ba5ee1b59c26ccb42cada99051f2fd316",
        "train/0": "dccc269557444a97f39d3ac90f146c5da53d927a3be59e7d3c09eecdb25e14c9",
        "train/1": "2a368fb9f336946541efc230ddb6472c6a31fe6c94a9fb6d01ad40923f157908",
        "train/2": "03a3fff9963e14dd8fd351cd260440fca0d09e66491a0fa76e660d8e66028afa",
        "train/3": "aa559e37a44371e236cb9ce7fcabfb12357ed7f208ef87ca8b9624410a194300",
        "train/4": "506ed1653046f66e0783ed759b791a7488672e3a5e738094ebe9856f655e3a05",
        "train/5": "4c2d0884b741cf00ffcb8a895bba39a5e4f7b6f403e8fb6bece1d3d3e8aa06a9",
        "train/6": "e0446e31caa19432d738ed176962a1b56e48769cb924bccf0f0e8841cbf790a1",
        "train/7": "c4429098b8433d85c65c8579b654830b6a3d61d04f22f25e310ba70bc701158a",
        "train/8": "45dae8e91d073a87cfd31a5fe9aebc5bac91207123aa261739bd9c75caa2bfec",
        "train/9": "e0d38013b7879b0cbb06ed82478562ab6e1357aac51d99a737da40474a77af46",
        "train/10": "bdb89d50070f44fe3322df02bc91057928959a5de432ae092ec8223412ef40a0",
        "train/16": "c04118bbe470fc0f9a5b37088b7bc834f3ec1663bf3244d4b646cf410cbe2cef",
        "train/17": "8b2cf315440100a150feab4451e67fc5da0b2a093b459f66ac8e401a6f89b17c",
        "train/18": "28fea7b4d0aef90d18b1b9fd3612e1bbd04b00e08f315d7e73a10a0affafe516",
        "train/19": "8d8e28ab6ca198a42f8582cf184e2ea8bb99d54dda3795b9b433e2fec2d80676",
        "train/20": "fb7ef12fcd849680bae6b05c1a4c3f7ddacb8b4fca4d81eaef6025b0c76ee32b",
        "train/27": "7743a9a6ce16d560b4aff1302b00a5bac3b75cc79f1f0a39daee4b0e8b5f49dc",
        "train/28": "514101185756fcfc7632fe2c73ae8315e4afd5b267efb7c89c03464e999b48dc",
        "train/29": "d8ebfbd79d1300b26cba76ba6cb5e72fdacbd36c5dbf0e1785a07f6e5847ecf0",
        "train/30": "a9a9b49ddd0b35ed5830b2421bc3725d523b07882ed892d84f3689c52353edd8",
    },
    "slz-ai+leaf-torch": {
        "test/0": "9d66184d85fe4b5c8b778200aa2104cebd54d301a891e9cc1fefbabae6af8c3c",
        "test/1": "f5648c5aa87df93661efadbc3d5bc8d1e2774f313060b911b3e02ce3e2546400",
        "test/2": "7603f84bfec06939c01226bd5feb6dca0a3204f93f0d15d4a89b584236a9d872",
        "test/3": "42b54b50ed36621b03a780a750d159c3060204645fc2f0bebf6a428806888c50",
        "test/4": "c8243e50b5a12fd9408a2200c53d240853f36cd7a88467a55d9c0ea19c5996ec",
        "test/5": "ed8dada6f9ad1d93c4fd5f6e9f6955fddee5e1fe2e93fddca5939e5a46637011",
        "test/6": "8fc9c6a629860d43c45948b45e6027f21d2706ee34173498381214fa2e1b8a6e",
        "test/7": "2a2bf4f5180b7fcb0370767fa90fc1fb1705ef7362780ad83f6875a7ac914f4e",
        "test/8": "7aa09436c0b3e66a2273aa2369a081d27c8c1b574683d1e704a69ca2e3bff153",
        "test/9": "9018adb140700c0825133427b6a5ad1b109c8891bffda087dd6e02f893d6b955",
        "test/10": "8fc955e360eb17085c1de0ff6d1bddd06b303a9671eb74da5fba879095043bc8",
        "test/16": "2af611c8110828a7be3ba2a883d640795de0ff63f9f519d10b709490d84cce32",
        "test/17": "db7b314ad3503b4ae71c6fa444695676f1ab4e83cf9ad09174a2b90432d46583",
        "test/18": "a314a3b3149af9b6ed9f60244dabd49d491d87dd400a64e5be8edb36072bb94a",
        "test/19": "5cd29730fa4d751d441bc639a4f13eaf142fda7e414c2b4f7ee352621f741d21",
        "test/20": "e2f3117efe372517fa77df090659df3f87fe2ec22c5faf814e25c0b36cf764b7",
        "test/31": "45e294bf53b2b6a3e634076f5bc34ad4ccee1ca1dbbcc8f72dd653dc393e9d9a",
        "test/32": "f29eefe78403068a9ef6401f3a731147dbb2c73372d458363d13a443853d7106",
        "test/33": "d48f94b362f57c45fb7e8b067312a44452f4acc43d75df9af01683d677612f32",
        "test/34": "738587dc02de1cffbe65fdde28f9455fa477f935b0611a76caa04892d5a62955",
        "train/0": "65ed15c9d28a1040fa548a1ef50f05143a12d51a8c2733a97a99d5d26006c793",
        "train/1": "655d6af73e5656d52f3044e1bf1e1e0c43b198b65b956d859ff84c1301accab6",
        "train/2": "8e983279df0f912b0c615d7604c9e2c9e5a2e1215fe19a44dac17a3dfcbf3d71",
        "train/3": "ae4422e5a94cc9b8017800be56c858f876724402c82c7b80acbb78b9265af913",
        "train/4": "22477a3b8562e3bea6e7adc711bc903fd9725aad1df9ab8116d40590bdb36576",
        "train/5": "03a2c11423cccc5805d11bb8e647d08ecf3030e0b92ecaf3ecffb73df496c1b0",
        "train/6": "89dfc8c110c0284a598a0891865652206d8995b2f3e6bdf7a7fd39ff8107fd6b",
        "train/7": "44e7e44ea1f2b0a45290040b00308c7d3897cdd474b699854bd4a43321c8695a",
        "train/8": "6877848fc7a78f4a7f9487c076d30794cb0ba490803800e49d666c9c59ddab34",
        "train/9": "7861c6e65e50744dddd8863d92fb88379b00d96fe4d89ee64aad0d3d2699b030",
        "train/10": "b1d6c3f2afb17dab6e35437b2258bc495267f3bb7a7f3424ecb650a24ceac3ca",
        "train/16": "e4f542f343cb4d49f3b29744be33572d07477d06e651882c67dd4e42083af7eb",
        "train/17": "6587d6c7f8d80ad30ee56040e658e06a598a54028424e904a74fcce225d6b6b7",
        "train/18": "b642e698f9876fa7b983a33d135a4c2c136f1789b6a50fb92564cf1315951daa",
        "train/19": "9499ebf63b6b555b6d352587b67477be9b455a7a101f54179f6d9f71ce08912c",
        "train/20": "faae255e347628814398767ec52971be41feeb82f1969174f4e9b447d30a3afa",
        "train/31": "fc51d3a869b3cfd5b4f705f86a8d5561527db3040de307550823297e54157c84",
        "train/32": "53f22736f443d2bbe6452f0dcde7349f4cc77f559a3f15b08160f67d24c6de22",
        "train/33": "22f9c9e7fb9d51191460b808f79492bef10e61ec1b7ec008802001bc3100e25a",
        "train/34": "3607b26a9f914d8ae173053d18585ea1c0beeb6a4dbf39f9e6496bcd942a421d",
    },
    "wenzhu23333+Federated-Learning": {
        "test/5": "63a637a938a68095fd9e3cfbcdffa03eb46dba1fe928487544a582c55cd43c25",
        "test/6": "0b7dfcb16036469d674b3c0b454366396917af128594b17d8a6a5cfd63852b09",
        "test/7": "34af135488274550c98f33fa1c50a1fd17dc8708899cb99aff65e709b42ee58d",
        "test/8": "f4a975fc5b42f843c7fefb9fdc140d8abfa9a7d4bba5ed3d7eb0772469aad0d2",
        "test/9": "bcc1eb4071b400bc3b7da87811a70550055cf962320e4876330318b3dbd64efa",
        "test/10": "170f5d6c9e3bcb7202cd7d9aaa42ad7c204657ea284610013cd2cc11a6951370",
        "test/11": "8327329c6456f26380195343130233be03e8b2f1cfe45736ada807f8e7d12b2e",
        "test/12": "d4f009daa8d6c15151305a2b4aba373c3fcbb4be49ba6724fcf0e73f100759f0",
        "test/14": "bb03c4a6009821c6214e731aa3a44d5312eb1df3b7dface9b896ddd5ced21a34",
        "test/20": "f60f66889d5add0ae704be791c50c14525f9a7b9f2c6f5342a4614a153620bd3",
        "test/21": "100d3ba9ea98e47f7bde4729e8a44fbc6484bbf66b62b297f49368d35bd1f463",
        "test/22": "aede9c977c11c3e86a5da96dbbf2371f8102f5e671157a53dd4310dc412e61e0",
        "test/23": "75e6d1bd174bcdc83f3af828edd401e1fe5fa819430ae4d056a4730a1e159474",
        "test/24": "3715285f47d5532ad94ce22ccd21be3c7b3168b39b6c2b00a9a88a361330a598",
        "test/30": "2e3d89578a1c2125d8f8e654b9105648fb391b4d14295055434251b25384f718",
        "test/31": "3f5ceff68c7a7249b9379e1200ba5aae8734d9be93e80435bddb90347a976cf7",
        "test/32": "34a4d284e59a96e570c2cbbd38b8a7b460b709cb168e22a02e4a43023a5babdc",
        "test/33": "4d82b9b600a17680ada0e529680617d947b1c06e9eaf107b382090513bc436ff",
        "test/34": "8afcdef1fd50dcd1bd7f9f90acf273321c0949506a49555b11e751f7e5e2374c",
        "test/35": "620c3e5f00439203f905e2ddd0dc6a26738cd2b14880aff95b548e7c26d2fd24",
        "train/5": "3ec73aa68f5bbb180d9541c7d4b73ee640f2b577dc99b48e487255d21d7e5414",
        "train/6": "1466d7fb900a13345cc277d5e8a7ff2db58776279b2c601578ae6492b083306b",
        "train/7": "d14f1344374b221202a362e64d8688b0d48c0625eae10d134425a99889e9f6aa",
        "train/8": "c78f19e456ac8a91f1a87cf9a5e89a342137de8ece94d046adc27eb5db8b23df",
        "train/9": "3b5ad2b44820b261b889bd96ab5b0b5cf3e1850378f8f366c2c03904ffd78d16",
        "train/10": "ee02e929bbb4b65d04f62beaaee9727ad6167fe145bfbaa9d60b19d96c9851f2",
        "train/11": "5a27f9780b09ee9137044aa29e204190da177b7f76d0a3baa737977dcc6da648",
        "train/12": "fefcc714d9ed55534e099e1a3249889de5192a3e0e55fb83e6db00cf23f0b1b5",
        "train/14": "75fce65a74fdfa5dfec83dc3a83dc4e9a9ec51277546b9963709e2feae8e085a",
        "train/20": "8a29ccb536f02f00d233e74b19588eeed92163cf158f22b37c0fe54fac4c0595",
        "train/21": "034ac75b90595cb01c8572676020236c2eda44435b32b94a4ced914b92a79e24",
        "train/22": "03ad8f36638c2d8b1f13c128c0ffb85576b181d68451349df3adf3595fd821ff",
        "train/23": "5fa6deb681cf98dd4b7d73aeb74a3fc5c30057fbf18055e792d194f921ddc8fc",
        "train/24": "976ebfc24228d096f02c0e6a8425717660a6a16fc8694e289149391000d72f6f",
        "train/30": "16da0a10eb6c9e7c64b132951b7b691e5ccee46ce280cd6a9426bd2c01afae75",
        "train/31": "647d9aed53433591d75705a22d60480eaa9830f2366be63360bd80e1f086a817",
        "train/32": "4ce7f3f5fd2a1860af0ce36e78fe65c2a8644e3fd6e7914c5e38643bc7faebfe",
        "train/33": "48d96cb9ead4c65830e50c2537db21e1fa550ec3d8dc260f49556eb04b575f4d",
        "train/34": "0273ca3a585d977c7a030fffb874c51daed49a303e71dfd64c0410a96a8fe45a",
        "train/35": "3c3bd80a5669f4f1481a925a2f94ced99a918a44df7d58d587d21650afe75b42",
    },
}
"""SHA-256 of the LEAF files in fedkit's test data, by source, then ``"<split>/<shard>"``."""


@dataclass(frozen=True, kw_only=True)
class FemnistOptions(CommonOptions):
    """FEMNIST options.

    Attributes:
        invert: return ``1 - x`` (dark background, like MNIST) instead of LEAF's values.
    """

    invert: bool = False


def read_leaf_json(path: Path) -> dict[str, Any]:
    """Parse a (gzipped) LEAF JSON file and check its top-level keys.

    Raises:
        FedkitDataError: unreadable, not JSON, or missing ``users``/``user_data``.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        data = json.loads(raw)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise FedkitDataError(f"{path}: not a readable LEAF JSON file: {e}") from e
    if not isinstance(data, dict) or "users" not in data or "user_data" not in data:
        raise FedkitDataError(f"{path}: LEAF JSON without 'users'/'user_data'")
    return data


def _shard_key(path: Path) -> tuple[int, str]:
    m = _SHARD.search(path.name)
    return (int(m.group(1)) if m else -1, path.name)


def femnist_files(root: Path) -> list[tuple[str, Path, Path]]:
    """The ``(source, train_file, test_file)`` triples under ``root/femnist``, in load order.

    Raises:
        DatasetNotFoundError: no LEAF train file, or a train file without its test file.
    """
    base = root / "femnist"
    sources: list[tuple[str, Path]] = []
    if (base / "train").is_dir():
        sources.append(("", base))
    if base.is_dir():
        sources += [(d.name, d) for d in sorted(base.iterdir()) if (d / "train").is_dir()]
    triples = []
    for name, folder in sources:
        for train in sorted((folder / "train").glob("*.json*"), key=_shard_key):
            test = folder / "test" / train.name.replace("_train_", "_test_")
            if not test.is_file():
                raise DatasetNotFoundError(
                    f"FEMNIST: {train} has no matching test file; put LEAF's {test.name} at {test}"
                )
            triples.append((name, train, test))
    if not triples:
        raise DatasetNotFoundError(
            f"FEMNIST: no LEAF JSON found under {base}. Generate it with LEAF "
            "(github.com/TalwalkarLab/leaf, data/femnist: ./preprocess.sh -s niid --sf 0.05 -k 0 "
            "-t sample) and put each run's train/ and test/ folders at "
            f"{base}/<run>/train and {base}/<run>/test (the shipped subset has SHA-256s "
            "listed in fedkit.data.datasets.femnist)"
        )
    return triples


def _checksum(source: str, path: Path, split: str, opts: CommonOptions) -> str:
    shard = _SHARD.search(path.name)
    known = _KNOWN_SHA256.get(source, {}).get(f"{split}/{shard.group(1)}") if shard else None
    if known is not None and path.name.endswith(f"_{split}_9.json.gz"):
        verify_file(path, "sha256", known, opts)
        return known
    return file_digest(path, "sha256")


def _user_arrays(path: Path, user: str, entry: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(entry["x"], dtype=np.float32)
        y = np.asarray(entry["y"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise FedkitDataError(f"{path}: writer {user}: malformed x/y: {e}") from e
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
        raise FedkitDataError(
            f"{path}: writer {user}: x {x.shape} / y {y.shape}, expected (n, 784)"
        )
    if y.size and (y.min() < 0 or y.max() >= _NUM_CLASSES):
        raise FedkitDataError(f"{path}: writer {user}: labels outside 0..61")
    return x, y


def _decode(triples: list[tuple[str, Path, Path]]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    owner: dict[str, str] = {}  # writer -> source it was taken from
    parts: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {"train": {}, "test": {}}
    for source, train_path, test_path in triples:
        taken: set[str] = set()
        for split, path in (("train", train_path), ("test", test_path)):
            data = read_leaf_json(path)
            for user in data["users"]:
                if split == "train":
                    if user in owner:
                        continue  # already taken from an earlier source or shard
                    owner[user] = source
                    taken.add(user)
                elif user not in taken:
                    continue
                x, y = _user_arrays(path, user, data["user_data"].get(user, {}))
                parts[split].setdefault(user, []).append((x, y))
    writers = sorted(owner)
    index = {w: i for i, w in enumerate(writers)}
    arrays: dict[str, np.ndarray] = {}
    for split, by_user in parts.items():
        xs, ys, cs = [], [], []
        for w in writers:
            for x, y in by_user.get(w, []):
                xs.append(x)
                ys.append(y)
                cs.append(np.full(len(y), index[w], dtype=np.int64))
        x = np.concatenate(xs) if xs else np.zeros((0, 784), np.float32)
        scaled = x * 255.0
        pixels = np.rint(scaled)
        if (
            np.abs(scaled - pixels).max(initial=0.0) > 1e-3
            or pixels.min(initial=0) < 0
            or pixels.max(initial=0) > 255
        ):
            raise FedkitDataError(f"FEMNIST {split}: pixel values are not k/255 in [0, 1]")
        arrays[f"x_{split}"] = pixels.astype(np.uint8).reshape(-1, 28, 28)
        arrays[f"y_{split}"] = np.concatenate(ys) if ys else np.zeros(0, np.int64)
        arrays[f"c_{split}"] = np.concatenate(cs) if cs else np.zeros(0, np.int64)
    return arrays, {"writers": json.dumps(writers)}


def load_femnist(root: Path, **options: Any) -> Dataset:
    """Load FEMNIST from ``root/femnist`` (see the module docstring)."""
    opts = parse_options(FemnistOptions, "femnist", options)
    triples = femnist_files(root)
    sums = [
        (source, _checksum(source, tr, "train", opts), _checksum(source, te, "test", opts))
        for source, tr, te in triples
    ]
    key = cache_key("femnist", _VERSION, {"files": sums})
    t, meta = cached("femnist", key, opts, lambda: _decode(triples))
    writers = tuple(json.loads(meta["writers"]))

    def split(name: str) -> Split:
        x = t[f"x_{name}"].unsqueeze(1).to(torch.float32).div_(255.0)
        if opts.invert:
            x = 1.0 - x
        return Split(x, t[f"y_{name}"].to(torch.int64), t[f"c_{name}"].to(torch.int64))

    return Dataset(
        name="femnist",
        train=split("train"),
        test=split("test"),
        num_classes=_NUM_CLASSES,
        input_shape=(1, 28, 28),
        client_names=writers,
    )
