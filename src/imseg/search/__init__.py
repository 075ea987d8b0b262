"""Auto-DeepLab's architecture search (Liu et al. 2019): the relaxed space, the bilevel loop, decoding.

    from imseg.search import load_search_config, search
    result = search(load_search_config("configs/search/camvid_cpu.yaml"))
    model = imseg.create_model("autodeeplab", num_classes=11, architecture=result["found"])

space.py (mixed ops, search cell, supernet, alpha / beta), decode.py (cell
decoding, Viterbi, random architectures), run.py (setup, checkpoints),
loop.py (the bilevel loop), config.py, plots.py. The command is
``imseg search CONFIG`` (docs/search.md).
"""
from imseg.search.config import SearchConfig, load_search_config
from imseg.search.decode import decode_architecture, decode_cell, random_architecture, viterbi_path, write_architecture
from imseg.search.loop import search

__all__ = ["SearchConfig", "decode_architecture", "decode_cell", "load_search_config", "random_architecture",
           "search", "viterbi_path", "write_architecture"]
