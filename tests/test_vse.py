"""VSE++ global baseline (mean-pooled regions): masks, batched-vs-reference similarity, overfitting."""
import torch

from fga.models.vse import VSEMean
from model_inputs import D_IMG, VOCAB, encode, make_batch, one, overfit_recall_at_1


def test_padding_regions_do_not_change_the_embedding():
    torch.manual_seed(0)
    model = VSEMean(D_IMG, VOCAB, embed_dim=16, word_dim=8).eval()
    regions, mask, _, _ = batch = make_batch(b=3, r=5, l=4, seed=1)
    assert not mask.all()
    img, _ = encode(model, batch)
    noisy = regions.clone()
    noisy[~mask] = 1e3  # padded regions carry garbage
    again = model.encode_image(noisy, mask)
    torch.testing.assert_close(again["emb"], img["emb"])


def test_batched_similarity_equals_per_pair():
    torch.manual_seed(0)
    model = VSEMean(D_IMG, VOCAB, embed_dim=16, word_dim=8).eval()
    with torch.no_grad():
        img, txt = encode(model, make_batch(b=4, r=5, l=6, seed=2))
    sim = model.similarity(img, txt)
    for i in range(4):
        for j in range(4):
            assert abs(float(model.similarity(one(img, i), one(txt, j))[0, 0]) - float(sim[i, j])) < 1e-5


def test_overfits_32_pairs():
    torch.manual_seed(0)
    r1 = overfit_recall_at_1(VSEMean(D_IMG, VOCAB, embed_dim=32, word_dim=16))
    assert min(r1) >= 0.9, r1
