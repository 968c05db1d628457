"""`mmfer convert-encoder FILE.nemo --out DIR`: a FastConformer .nemo file as a transformers folder, without NeMo.

The folder (ParakeetEncoder weights + config, ParakeetFeatureExtractor settings) is what `--audio-encoder DIR`
reads through the parakeet encoder kind; the conversion itself, and what it refuses, is extract/encoders/nemo_convert.py.
"""

from __future__ import annotations

import argparse

DESCRIPTION = ("Convert a FastConformer .nemo file (e.g. stt_en_fastconformer_ctc_large) into a transformers folder "
               "(ParakeetEncoder + ParakeetFeatureExtractor) that --audio-encoder DIR reads without NeMo installed. "
               "Reads the .nemo with tarfile/yaml/torch (NeMo is not needed) and refuses, naming the setting, what the "
               "transformers classes cannot compute: limited attention context (encoder.att_context_size other than "
               "[-1, -1]), subsampling other than dw_striding by a power of two, other preprocessors or mel settings.")


def add_convert_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    from mmfer.core.config import ExtractConfig

    default = ExtractConfig().audio_encoder
    parser.add_argument("nemo_file", metavar="FILE.nemo", nargs="?", default=default,
                        help=f"The NeMo FastConformer model file to convert, or a hub id whose .nemo is in the local "
                             f"HF cache (default: {default}, the extract default).")
    parser.add_argument("--out", required=True, metavar="DIR", help="Folder to write (must not exist or be empty).")


def cmd_convert_encoder(args: argparse.Namespace) -> int:
    from mmfer.extract.encoders.nemo_convert import convert_nemo

    out = convert_nemo(args.nemo_file, args.out)
    print(f"converted {args.nemo_file} to {out} (use it with --audio-encoder {out})")
    return 0
