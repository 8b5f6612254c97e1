"""Our .npz shards in the 2020 layout (`--layout 2020`) feed the 2020 pretraining loader:
NumpyDataset(allow_pickle=True), lengths from get_field('valid_lengths'), FixedBucketSampler with
average length, Tuple(Pad x4, Stack, Pad, Stack) over the fields in sorted-key order."""
import numpy as np
import pytest

pytestmark = pytest.mark.gluon
nlp = pytest.importorskip("gluonnlp")

from bort_core.data import pretraining as pt  # noqa: E402
from bort_core.data.demo import CORPUS_PATH  # noqa: E402
from bort_core.data.shards import FIELDS  # noqa: E402
from bort_core.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    docs = list(pt.read_documents(CORPUS_PATH))[:40]
    text = tmp_path_factory.mktemp("text") / "corpus.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    stats = pt.create_pretraining_data(
        [str(text)], str(tmp_path_factory.mktemp("out")), load_tokenizer(),
        pt.PretrainingOptions(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=4),
        progress=False, layout="2020")
    assert stats["instances"] > 1000    # the streamed pickles append items in batches of 1000
    return stats["files"][0], stats


def test_shard_loads_like_the_2020_loader(shard):
    path, stats = shard
    dataset = nlp.data.NumpyDataset(path, allow_pickle=True)
    assert dataset.keys == sorted(FIELDS) and len(dataset) == stats["instances"]
    lengths = dataset.get_field("valid_lengths")
    sampler = nlp.data.FixedBucketSampler(lengths=lengths, batch_size=512, num_buckets=4,
                                          shuffle=True, use_average_length=True, num_shards=1)
    P, S = nlp.data.batchify.Pad, nlp.data.batchify.Stack
    batchify = nlp.data.batchify.Tuple(P(pad_val=0), P(pad_val=0), P(pad_val=0), P(pad_val=0),
                                       S(), P(pad_val=0), S())
    loader = nlp.data.ShardedDataLoader(dataset, batch_sampler=sampler, batchify_fn=batchify)
    seen = 0
    for (batch,) in loader:                  # one shard: a list of one batch
        ids, mlm_ids, mlm_pos, mlm_w, nsp, seg, vlen = batch
        n = ids.shape[0]
        assert ids.dtype == np.int32 and ids.shape == seg.shape and ids.shape[1] == vlen.max()
        assert mlm_ids.shape == mlm_pos.shape == mlm_w.shape and mlm_w.dtype == np.float32
        assert nsp.shape == vlen.shape == (n,)
        # masked weights are 1 exactly where a prediction exists, padding 0
        counts = (mlm_w.asnumpy() > 0).sum(axis=1)
        assert (counts == np.minimum(20, np.maximum(1, np.round(vlen.asnumpy() * 0.15)))).all()
        seen += n
    assert seen == len(dataset)


def test_every_sample_is_one_record_across_the_fields(shard):
    path, _ = shard
    dataset = nlp.data.NumpyDataset(path, allow_pickle=True)
    dtypes = [np.int32, np.int32, np.int32, np.float32, np.int32, np.int32, np.int32]
    for ids, mlm_ids, mlm_pos, mlm_w, nsp, seg, vlen in dataset:
        assert [np.asarray(x).dtype for x in (ids, mlm_ids, mlm_pos, mlm_w, nsp, seg, vlen)] \
            == dtypes
        assert len(ids) == len(seg) == vlen and len(mlm_ids) == len(mlm_pos) == len(mlm_w)
        assert nsp in (0, 1) and 0 < mlm_pos.min() <= mlm_pos.max() < vlen - 1
