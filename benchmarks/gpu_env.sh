# Source on the GPU machine: unpack the carried packages (.whl/, see ../shared/gpu/README.md) and go offline.
mkdir -p /tmp/site && tar xzf .whl/site.tar.gz -C /tmp/site
python3 -c "import psutil" 2>/dev/null || pip install -q --no-deps --target /tmp/site .whl/psutil*.whl
python3 -c "import bm25s" 2>/dev/null || pip install -q --no-deps --target /tmp/site .whl/bm25s*.whl  # retrieval's BM25
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
