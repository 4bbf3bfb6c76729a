"""SAC: the correlation among a model's outputs on a fixed query set as its fingerprint (Guan, Liang, He).

Paper: "Are You Stealing My Model? Sample Correlation for Fingerprinting Deep Neural Networks"
(NeurIPS 2022, arXiv:2210.15427; code github.com/guanjiyang/SAC). Built for the copies a thief makes
without the weights: distillation and label or probability extraction, which keep how the source
relates samples to each other even where they change its labels.
Access: the owner's source model and calibration models are local torch modules to *create* the key;
the suspect is asked *probabilities* to verify (labels only: the one-hot variant below).

Query set (n = 100 in the paper), drawn from held-out natural images (the natural pool: the first half
of the test split, ``nnmark.data.roles``), two variants (``variant``):

- SAC-w (``misclassified_queries``): natural images the source model labels wrongly, screened
  (``screened``, ``screen``) by the pools' validation negatives (independent models): by default
  ("minority") an image is kept only where fewer than half of them give the source's label, so the
  key asks where the source decides unlike independent models; "wrong" keeps the paper's condition
  (most of them misclassify it too), "none" every error of the source; "rare" (``rarest``) keeps every error
  but asks first those whose source label they give the least mean probability;
- SAC-m (``cutmix_queries``): CutMix images, a natural image with a square patch of another pasted in.

Fingerprint (``correlation_matrix``): for outputs O_1..O_n of a model on the queries, the n x n matrix
C_ij = cos(O_i, O_j) = O_i . O_j / (|O_i| |O_j|), the cosine similarity the paper chooses among its
correlation functions. Distance (``correlation_distance``): d = ||C_source - C_suspect||_1 / n^2, the mean
absolute difference of the two matrices (the paper's and its code's measure). Smaller d: more alike. The
``statistic`` "agreement" (``agreement_distance``) compares no matrices: d = 1 - mean_i O_i[l_i], the suspect's
mean mass on the source's labels l_i (for one-hot outputs: the share of queries it labels otherwise); it decides on
one-hot labels only, since a suspect's mass on any label grows with its confidence (study below).

Outputs: the key keeps the source's probabilities on the queries (the extra tensor "probabilities"; the
expected labels are their argmax). A probabilities oracle is compared on probability vectors sharpened at
``temperature`` T (``sharpen``: softmax(log p / T), which is softmax(z / T) of the logits z whatever
per-sample constant they carry, since log p = z - logsumexp z; T = 1 is p itself); a labels-only
oracle on one-hot vectors (C_ij = 1 when O_i and O_j name the same label, else 0). The key calibrates both
(``OUTPUTS``); verification decides on the richest output the oracle gives (or on the one-hot labels when the key's
``decide_on`` says so) and reports the other distance beside it.

Calibration (``calibrate``) on K models the owner trained independently of the source (the "shadow" input:
one model per family of the pools' negatives (``one_per_family``: an eq. 1 noised copy of a negative is the
same draw of the null, not another), less the validation negatives when they screened SAC-w's queries, since
the screen pushes exactly their distances up; plus ``scratch_negatives`` models of the source's own recipe
(``scratch_models``: its architecture re-initialised, trained from scratch on the owner's labelled images for
``scratch_epochs``, seeds of their own), the caller's ``extra_negatives``, and ``distilled_negatives`` students
distilled from the train families' models (none by default); the paper compares with 20 "irrelevant" models): their
distances d_1..d_K set the threshold tau = min_k d_k, so no calibration model would match. The key records tau,
d_1..d_K (in the order of ``CALIBRATION_KINDS``, counted by kind in ``calibrated_on``) and their mean and standard
deviation, per output; the distances of the derived positive shadow models (noised and fine-tuned copies of the
source), when the pools have any, are recorded beside them as evidence, not used.

False-claim bound (``p_values``): the p-value that decides is that of a fitted null. It holds for a new
independent model drawn from the law the calibration models were drawn from: hence the scratch negatives, drawn as
an independent model of the source's recipe would be (the nearest independent models there are). The K calibration
distances are taken as draws of a normal N(mu, sigma^2) with both parameters unknown; a new independent
model's distance d then has the predictive law mu_hat + s sqrt(1 + 1/K) T_{K-1} (mean mu_hat, sample
standard deviation s, Student's t with K - 1 degrees of freedom), so p = P[T_{K-1} <= (d - mu_hat) /
(s sqrt(1 + 1/K))]: the chance that an independent model lies as close as the suspect. The t (not a
normal with mu_hat and s plugged in) pays for estimating the spread from few models: on digits, a
plug-in normal over K = 3 models gave an independent LeNet-5 p = 6e-14 on the one-hot SAC-w distance;
the t over K = 5 gives it 0.003, still a false match at 0.01 (the threshold let it through too: one-hot
SAC-w on the 22 images a digits LeNet-5 gets wrong is weak; SAC-m separated every model measured).
The empirical p-value (1 + #{k: d_k <= d}) / (1 + K) is reported beside it: it assumes nothing about
the null's shape, but it cannot fall below 1 / (K + 1) (1/7 with the 6 from-scratch models of ``--af 0``, about 0.05
with the paper's 20), so with the few models an owner trains it could never reach a useful bound. The
normal shape is the assumption the decision rests on; ``create`` refuses a key on which even the source
(d = 0) would not reach p < max_p_value.
Decision: "match" (the suspect is the source or derived from it; ``passed``, CLI exit 0) iff
d < tau AND p < max_p_value, else "no match" (exit 1).

Symbols and defaults: n = 100, CutMix patch side ``patch`` = 0.5 of the image side at a uniformly drawn
position (the authors' code pastes a 0.2 patch near a corner of a 32x32 photo; the corners of a digit are
blank, so nnmark's default patch covers part of the digit), T = 1 for SAC-m and 0.1 for SAC-w, screen
"minority" (SAC-w only), 20 scratch negatives at ``SCRATCH_EPOCHS`` = 8 (the pools' default epochs; the bench
passes its pools' 4), no distilled negatives, max_p_value = 0.01, K >= 2 (the t needs K - 1 >= 1).
Key format 2 records T; a format-1 key (before T) is verified on plain probabilities, as it was made. Format 3
records ``decide_on``: the output that decides when the suspect gives probabilities ("probabilities", the default,
or "labels": their one-hot labels, which the study below found the better test of label extraction on all the
source's errors); a format-1 or 2 key decides on probabilities. Format 4 records ``calibrated_on`` (how many
calibration models of each kind: families, scratch, extra, distilled; checked to sum to K) and ``scratch_epochs``; a
key of format 1-3 (distilled negatives by default then) verifies as before. Format 5 records ``statistic``; a key of
format 1-4 compares correlation matrices.

Choices and gaps:

- SAC-w's screen: the paper asks that surrogate models misclassify the images too ("wrong"); nnmark asks
  that most independent models *label them otherwise than the source* ("minority"), which measured
  better (below).
- outputs are probabilities, as every nnmark oracle gives them; the authors' code correlates raw logits.
  Their signal reaches an API exactly (centred log-probabilities are centred logits), but logits and
  centred logits both measured worse than probabilities here (study); SAC-w sharpens them instead.
  One-hot rows are plain 0/1 vectors (the code smooths them, an affine change of C that only rescales d).
- scratch negatives: a copy of the source re-initialised by each layer's ``reset_parameters`` (``fresh_copy``, as
  a same-architecture student starts), so any module (a factory's, behind its normalisation) gets one; for
  LeNet-5 that is the zoo's initialisation, for ResNet-20 and VGG-11 (He-initialised convolutions in the zoo)
  torch's default, a slightly different law. They cost ``scratch_negatives`` trainings a key (a LeNet-5 for 4
  epochs on 30,000 Fashion-MNIST images: 10-30 s alone on a core, up to 100 s on 2 busy cores; a ResNet-20 for 2
  epochs about 110 s). ``nnmark mark sac`` makes them as shadow specs instead (``scratch_specs``: initialised as the
  pools' negatives are, the zoo's or the factory's under the seed), trained in the pools' workers and cached with
  them, so the SAC-m and SAC-w keys of one source train them once; ``create`` without ``scratch`` trains them here.
- distilled negatives (``distill_negatives``, none by default): the hardest independent models (a student of an
  independent teacher) are the ones SAC-m claims, but a null fitted on them is too narrow (below); each is made at
  ``distill_epochs`` (25-50 s for a LeNet-5 on 30,000 Fashion-MNIST images on 2 cores). On the digits (13 SAC-w
  images) nine spread so wide that a distilled copy of the source gets p = 0.015; two let it match. Each starts from a
  seed of its own (``DISTILLED_SEEDS``); they once took seeds 1 + i, the seeds of their teachers and of the
  screening models when the pools are seeded from the source's seed 0 (the bench's).
- the query images come from the natural pool of ``dataset``, the one the shadow models train on (``nnmark
  mark sac`` passes it); a caller that passes none gets the dataset ``meta["data"]`` names, refused when its
  training images differ from those given.
- with ``--af`` > 0 the pools' negatives include noised copies of each independent model: independent of the
  source, but not of each other, and of a wider law (noised, then repaired); they do not calibrate. Their
  parameters keep a cosine of about 0.9 with their base's (independent models: about 0.01), which is how
  ``one_per_family`` finds them without the pools' layout (``FAMILY_COSINE`` = 0.5).

Study (``nnmark bench ownership``'s seed-0 models: LeNet-5 victim on the owner half of Fashion-MNIST, its
thieves' copies, 21 independent models of three architectures, 4 of them distilled from independent
teachers; ROC AUC of the distance, copies against the independent models). First, one cause at a time
from the models' logits, mean over 5-20 draws of n = 100 queries, for the three thefts SAC-m missed
(extraction with labels / probabilities into VGG-11, label extraction + PGD training at eps 0.05):

==============================================================  =========  =========  ========
cause tested                                                    labels     probs      + PGD
==============================================================  =========  =========  ========
SAC-m as it was (CutMix 0.5, probabilities, cosine, L1)         0.68       0.95       0.66
logits, as the authors' code                                    0.13       0.53       0.93
centred log-probabilities (= centred logits)                    0.03       0.67       0.80
one-hot labels                                                  0.61       0.89       0.84
patch 0.2 uniform / in a corner (authors' code)                 0.52/0.30  0.97/0.99  0.32/0.15
natural images instead of CutMix                                0.21       1.00       0.08
Pearson for cosine, L2 or 1 - corr(C, C') for L1                0.57-0.65  0.97-0.99  0.69-0.95
SAC-w: the source's errors                                      0.33       1.00       0.57
SAC-w, paper's screen (most of 11 independent models wrong)     0.35       1.00       0.47
natural, minority screen by 11 independent models               0.10       1.00       0.91
the same, sharpened T = 0.1                                     1.00       1.00       1.00
CutMix 0.2, minority screen, T = 0.1                            0.95       0.99       0.99
==============================================================  =========  =========  ========

Sharpening matters because a copy trained on hard labels answers ambiguous images with its own
confidence: the probabilities' correlation then tells it from the source, the labels' do not. The
screen asks where the source decides unlike independent models, which is what a copy inherits. Then
end to end with ``create`` (3 seeds; 2 validation negatives screen, 9 train negatives plus 2 distilled
ones calibrate): AUC for the same thefts, and the independent models the decision rule claims (of 63):

=============================================  =====  =====  =====  ======================================
key                                            labels probs  + PGD  false claims
=============================================  =====  =====  =====  ======================================
SAC-m (default, as before)                     0.68   0.94   0.73   2 (a LeNet-5 distilled from a LeNet-5)
SAC-m, 2 distilled negatives or not            0.68   0.94   0.73   2 (the same)
SAC-m, T = 0.1                                 0.68   0.65   0.75   0
SAC-m, 2,000 CutMix candidates screened        0.81   0.97   0.83   3 (ResNet-20s and a student of one)
SAC-w as before (no screen, T = 1)             0.37   1.00   0.56   0
SAC-w, paper's screen ("wrong")                0.43   1.00   0.43   0 (seed 0: no key, too few models)
SAC-w, minority screen, T = 1                  0.02   1.00   1.00   0
SAC-w, no screen, T = 0.1                      0.84   1.00   0.46   0
SAC-w default (minority, T = 0.1)              1.00   1.00   1.00   0
SAC-w default, labels only (one-hot)           1.00   1.00   1.00   0
=============================================  =====  =====  =====  ======================================

SAC-w (default) scores AUC 1.00 against every theft that keeps its accuracy (labels only: 0.93 against
distillation into VGG-11, 1.00 elsewhere), so the issue's SAC goals (0.99 against distillation and
extraction, 0.9 against extraction + adversarial training) hold for SAC-w on these models, and stay
refuted for SAC-m (0.68 / 0.94 / 0.73). The decision rule is weaker than the AUC: with 11 calibration
models the t-bound at 0.01 matched, over the 3 seeds, 0 / 1 / 3 of 3 of those copies, and 2 / 3 of the
distillations into VGG-11. The screen was chosen on these very models; a second victim would test it.
The distilled negatives did not remove SAC-m's false claim; they raise SAC-w's matches (K 9 -> 11).
SAC-m stays the default variant because SAC-w needs enough screened errors of the source (13 on the
digits, 106 of 594 errors here).

The decision rule (a study of that change, from the same models' outputs through this module's
functions; 12 more cached LeNet-5s from scratch that the bench does not use, as a held-out check). The null's
calibration had 3 from-scratch models, their 6 noised copies and 2 distilled negatives; one noised copy (0.30
against 0.26-0.28) widened the fitted null. Matches of SAC-w (probabilities, key seeds 0-2) at p < 0.01:

===========================================  ======  ======  ======  ======  ======  ================
calibration (K)                              dist.   labels  probs   + PGD   prune   false claims
                                             VGG-11  VGG-11  VGG-11          70%     (21 / 12 held out)
===========================================  ======  ======  ======  ======  ======  ================
3 from scratch + 6 noised + 2 distilled (11)  2/3     0/3     1/3     3/3     0/3     0/63, 0/36
3 from scratch + 5 distilled (8)              2/3     1/3     1/3     3/3     0/3     0/63, 0/36
3 from scratch + 9 distilled (12, old)        3/3     2/3     2/3     3/3     2/3     0/63, 0/36
===========================================  ======  ======  ======  ======  ======  ================

(the other thefts within 5 points: 3/3 under every row, but prune 90% + fine-tune 0/3; labels only, the new
rule: label extraction + PGD and RTAL 2/3, the three VGG-11 copies 0/3.) Each row is close to one draw (the
seeds share 94 of 100 images), so 30 random draws of the students from 12 made gave the expected rates: for
the three VGG-11 copies and + PGD, 0.49 / 0.07 / 0.17 / 0.69 with the noised copies (K 11); without them
0.56 / 0.39 / 0.39 / 0.62 at K 5, 0.74 / 0.60 / 0.62 / 0.96 at K 8, 0.90 / 0.73 / 0.68 / 1.00 at K 10,
1.00 / 0.78 / 0.74 / 1.00 at K 12; no false claim among the 21 independents in 1,890 trials, 0-8 of 1,080
among the held-out LeNet-5s (the owner-half ones, the nearest; at most 0.7%, within the 1% the rule states).
Screening by the train negatives and calibrating on the validation ones instead fell to 0-0.33 on those
copies. The fit: the normal holds on the 21 independents' distances (Shapiro-Wilk p 0.28-0.81, leave-one-out
predictive p-values: 2-3 of 21 below 0.05, 2-3 below 0.1) and on the 15 owner-side LeNet-5s; log d fits no
better (the spread is 3% of the mean, skew -0.6 to +0.25) and gained 0-0.1 TPR, so the shape stays normal on
d. max_p_value stays 0.01: the bound the rule states; nothing was tuned on the 21 independents.

The null, revisited (the bench's seed-0 outputs, distilled negatives seeded apart, key seeds 0-2; 60 held-out
independents the bench does not use: 28 LeNet-5s from scratch on the owner half, 14 on the thief half, 12 VGG-11s,
6 ResNet-20s; nothing tuned on the bench's 21):

- Why label extraction + PGD gets p 0.03 (reproduced: 0.0307 with the old students): the copies lie inside the null,
  not past it. The nearest independents, owner-half LeNet-5s (4 of the 21), put them at z -0.9 to -1.9; one of them
  (seed 2003, z -2.1 to -2.3) is closer than both on every key seed. Calibrated on such models alone, more of them
  raise the copies' p: K 6 / 12 / 20 gives median p 0.068 / 0.052 / 0.044 (eps 0.05), 0.12 / 0.098 / 0.090 (eps 0.1),
  with 0.5 / 0.9 / 1.0% of the left-out owner-half LeNet-5s claimed (the bound holds) and 0-1 of 6,300 draws of the
  21. A t over log d changes nothing (0.038 / 0.084 at K 28); more queries are not there (the screen keeps 106 of the
  source's 594 errors); T 0.2 / 0.3 brings eps 0.05 to p 0.008 / 0.005 but not eps 0.1 (0.023 / 0.019) and loses label
  extraction into VGG-11 (0.004 -> 0.12 / 0.73) and prune 90% (0.018 -> 0.08 / 0.22). No honest change of K, null
  shape, n or T reaches p < 0.01 on both copies.
- The default null (3 families + 9 students of those 3 teachers) does not keep its bound against the nearest
  independents: over 100 draws of its 9 students from 17 it claimed 4.3% of the left-out owner-half LeNet-5s at the
  stated 1% (one-hot: 5.7%, and 34 of 6,300 draws of the 21); one student per teacher 1.9%, all 17 6.0%: the students
  spread less than from-scratch models of the source's recipe (sd 0.006-0.007 against 0.009). With it the PGD copies
  get p 0.013 / 0.035 (eps 0.05 matches 1 of 3 key seeds, 43% of the draws). Calibrated on K from-scratch owner-half
  LeNet-5s instead (``extra_negatives``, or more pool negatives and no distilled ones) the bound holds (K 12 / 20: 0.9
  / 1.0%, none of the 21) and the rule matches, per draw: distillation 0.75-1.00, RTAL, prune 70% and fine-pruning
  0.98-1.00, noise 0.70-0.97, probability extraction into VGG-11 0.99-1.00, label extraction into VGG-11 0.47-0.67,
  probability extraction 0.25-0.31, prune 90% 0.11-0.13, PGD 0.00-0.04. The study asked that SAC-w calibrate on
  from-scratch models of the source's recipe: the last bullet is that change.
- Same-architecture label extraction: on the screened images the copy is as far as independent models (AUC 0.89, p
  0.38; T 0.2-1 worse). On all the source's errors (``screen="none"``, ``n`` at least their number, 594 here: the
  paper's query set less its surrogate condition) it is the closest LeNet-5: AUC 1.00 on every key seed, and with the
  default calibration (K 14: families, screening models, 9 students) the rule matches it 3 of 3 (p 0.0009; one-hot
  0.0007; the same end to end through ``create`` and ``verify``, the key made in 306 s with its 9 students) with every
  distillation and extraction, no false claim among the 21, 1 of 28 owner-half LeNet-5s (one-hot: none). Against K 12
  / 20 from-scratch owner-half LeNet-5s (300 draws) it matches 0.39 / 0.52 of the draws on probabilities and 0.69 /
  0.98 on one-hot labels (label extraction into VGG-11 0.44 / 0.59 and 0.76 / 1.00, the other distillations and
  extractions 0.90-1.00; false claims 0.0-0.4% of the left-out ones, none of the 21), which a key made with
  ``decide_on="labels"`` decides on. This key misses what keeps the weights and the PGD copies (AUC 0.43-0.95): a
  second key, not the default; with 100 / 300 such images AUC 1.00, p 0.017 / 0.016.
- The bound kept (the default since then: one model per family + ``scratch_negatives``; a
  simulation over cached outputs). The 3 families and the 28 held-out owner-half LeNet-5s are
  draws of one recipe, the source's, as ``scratch_models`` trains them; N of the 28 were drawn as the scratch
  negatives (200-300 draws, key seeds 0-2) and the rest judged. The rate is the mean over the 28 models of how often
  each is claimed when left out, with a 95% bootstrap interval over those models (the unit of noise: one model,
  seed 2003, is claimed in 27-34% of the draws that leave it out, and carries most of it). SAC-w, p < 0.01:

  ==========================================  ===================  ===================  =============
  calibration (K)                             false claims, probs  one-hot              the 21
  ==========================================  ===================  ===================  =============
  3 families + 9 of 26 students (old, 12)     1.5% [0, 3.9]        3.5% [0.1, 8.9]      6 / 23 of 18,900
  3 families + 12 scratch (15)                1.2% [0, 3.5]        1.4% [0, 3.7]        0 / 0 of 12,600
  3 families + 16 scratch (19)                1.2% [0, 3.7]        1.2% [0, 3.3]        0 / 0 of 12,600
  3 families + 20 scratch (23, the default)   0.95% [0, 2.8]       0.9% [0, 2.4]        0 / 0 of 12,600
  ==========================================  ===================  ===================  =============

  (pooled over draws instead of per model, 20 scratch: 1.3% / 1.0%.) 20 is the default: the estimate nearest the
  bound, the best match rates, the paper's count. 28 models cannot show the rate below 1%, only that it is
  consistent with it; that the t-prediction is exact for normal draws is a unit test. Its matches per draw (SAC-w,
  probabilities; the old default's in brackets): distillation same arch / VGG-11 1.00 / 1.00 (1.00 / 1.00),
  probability extraction same arch 0.38 (0.81), label extraction into VGG-11 0.73 (1.00), probability extraction
  into VGG-11 1.00 (1.00), RTAL, prune 70% + fine-tune, noise + fine-tune and fine-pruning 1.00 (1.00), prune 90% +
  fine-tune 0.16 (0.58), label extraction + PGD 0.00 at eps 0.05 and 0.1 (0.43, 0.01), label extraction same arch
  0.00 (0.00); one-hot: RTAL 0.87, probability extraction into VGG-11 0.41, fine-pruning 0.19, label extraction
  into VGG-11 0.04, the rest 0. What the old default matched beyond these it matched on a null too narrow to
  state. SAC-m (CutMix, T = 1, its 5 pool models + 20 scratch, K 25) keeps the bound on probabilities (0.06%
  [0, 0.18], none of the 21) and matches distillation 0.67 / 1.00, RTAL 0.67, prune 70% 0.72, fine-pruning 0.53,
  noise 0.29, probability extraction same arch 0.05, the rest 0; on one-hot labels it claims 1.7% [0, 4.3] of the
  held-out LeNet-5s and 0.76% of the 21 (96 of 12,600): one-hot SAC-m distances take few values, the least normal
  null measured, so its labels-only verdict is the weakest bound. End to end (``create`` with its own 20 scratch
  negatives at 4 epochs, key seed 0, SAC-w): the key took 632 s on 2 busy cores (20
  trainings, about 30 s each); it matched distillation into both architectures, extraction into VGG-11 (labels p
  0.002, probabilities 0.0001), RTAL, prune 70% and 90% (p 0.007), noise and fine-pruning, not probability
  extraction same arch (p 0.0101), label extraction same arch (0.41) nor the PGD copies (0.036); none of the 28
  held-out owner-half LeNet-5s (the nearest, seed 2003, p 0.014). The SAC-m key (its 5 pool models + 20 scratch,
  243 s on less busy cores) matched distillation into both architectures, probability extraction same arch (p
  0.002), RTAL and prune 70%, nothing else, and none of the 28 (nearest p 0.016).

Label extraction into the same architecture at <= 100 queries (a study over the models' cached outputs;
calibration: the 3 families + 20 of the 28 held-out owner-half LeNet-5s as scratch
negatives, the other 8 judged, 300 draws, key seeds 0-2; the rate per model as in "The bound kept"; over-confident:
the left-out and the 21 independents with their probabilities sharpened at T 0.1, still independent models). The
copy agrees with the source on more of its errors than independent models do (about 44 of 100 against 22 +- 4.5),
but where most independent models share the error too that agreement is no evidence: asked first (``screen``
"rare") the errors on which the pools' 2 validation negatives give the source's label the least probability, and
judged by the share of them it labels as the source (``statistic`` "agreement"), it is matched in about half the
draws at 100 queries with no false claim. Matches per draw: label extraction same arch / into VGG-11 / + PGD eps 0.05:

=========================================  ==================  =============  ======  ==============
100 queries, statistic                     matched             left-out       the 21  over-confident
=========================================  ==================  =============  ======  ==============
errors in seeded order, correlation T 0.1  0.09 / 0.00 / 0.00  1.4% [0, 3.9]  0       0.30%
  the same, one-hot correlation            0.37 / 0.00 / 0.00  1.1% [0, 2.9]  0       0.28%
  agreement of probabilities (T 1)         1.00 / 1.00 / 0.00  0.7% [0, 2.1]  13      68%
  agreement of one-hot labels              0.21 / 0.00 / 0.00  0.01%          0       0
rare first, correlation T 0.1              0.00 / 1.00 / 0.00  0              0       0
  the same, one-hot correlation            0.00 / 0.17 / 0.00  0.8% [0, 2.3]  0       0.20%
  agreement of probabilities (T 1)         1.00 / 1.00 / 0.00  0              0       1.1%
  agreement of one-hot labels (the key)    0.48 / 1.00 / 0.00  0              0       0
=========================================  ==================  =============  ======  ==============

(the 21: claims of 18,900.) The probabilities' agreement is a confidence test: a copy trained on hard labels is sure
of itself, so on the source's errors it puts mass on whatever it answers, and an independent model made
over-confident is claimed in 68% of the draws (on the rare errors 1.1%, and with K 13 1.4% sharpened at T 0.1, 2.2%
answering one-hot probabilities: above the 1% stated): it may not decide (``create`` and ``verify`` refuse it). The
correlation of the same images misses the copy. The one-hot agreement on the rare errors matches the rest as SAC-w
does (distillation, probability extraction, RTAL, prune 70%, noise, fine-pruning 1.00; prune 90% 0.11), the PGD
copies never (eps 0.05 and 0.1: 0.00; their agreement lies in the null). Tried and left: the errors ranked by how
many of 10 scratch models give the source's label (the other 10 calibrating, K 13) match the copy 0.76 but claim the
LeNet-5 distilled from a ResNet-20 in 20% of the draws (it agrees on 30-34 of them); the mean probability of 10
scratch screeners instead 0.52 (4: 0.62, K 19), with the screening models out of the calibration, as the screen
study found they must be; weighting or ranking by the source's own confidence 0.00-0.24; the 150 rarest errors with
the source's least confident first 0.76, but on the bench's own keys of victim seeds 0-2
(checked before any use) it gave the copy p 0.005 / 0.037 / 0.11 against the key's 0.0009 /
0.041 / 0.025 and matched 10, 7, 7 thefts against 11, 7, 8: not kept; the errors that the owner's own students of the
source (the thief-aware pools' extracted and distilled LeNet-5s) reproduce, first: the copy agrees on 0.71-0.78 of 100
of them, but the independent models on 0.38-0.49 (sd 0.13-0.17), so its z against them falls from 1.9-4.4 to 1.7-2.9
(seeds 0-2; into VGG-11 from 1.7-6.5 to 1.4-2.4): not kept. The order was chosen on
these very models; 28 models show the bound kept, not below 1%. The key misses the copy in half the draws: no honest
test found here matches it every time at 100 queries. End to end (the bench's seed-0 key,
``create`` with the 20 scratch models ``Owner.scratch`` trains, K 23, null mean 0.757, sd 0.040) it matched the copy
(d 0.61, p 0.0009) and every other theft within 5 points but the PGD copies (eps 0.05: d 0.68, p 0.037; 0.1: p
0.023), none of the 21 nor of 60 held-out independents (the nearest: owner-half LeNet-5s at d 0.67-0.68, p
0.023-0.037). That null is narrower than the 28 held-out owner-half LeNet-5s spread (sd 0.053; 10 of them at p <
0.1; the two spreads' F-test p 0.18): calibrated on those and the families (K 31) the copy still matches, at
p 0.009: the seed-0 key's p 0.0009 is on the lucky side of the draws.

Example::

    pools = metafinger.Pools([], negatives, [], [extra_negative])
    key = sac.create(source, pools, ds.train.x, variant="m", dataset=ds)
    verdict = sac.verify(TorchOracle(suspect, ds.shape), key)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import torch
from torch import nn

from nnmark import data
from nnmark.attacks.distill import SOK_TEMPERATURE, distill, fresh_copy
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError, InputError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile, note_shortfall
from nnmark.marks.ownership.metafinger import Pools
from nnmark.marks.ownership.stats import normal_fit, predictive_tail
from nnmark.marks.ownership.shadow import DEFAULT_EPOCHS, ShadowSpec
from nnmark.marks.spec import MethodSpec
from nnmark.marks.verdict import Verdict
from nnmark.models.card import ModelCard
from nnmark.models.training import device_of, train
from nnmark.oracles import Oracle, TorchOracle, check_inputs
from nnmark.oracles.local import DEFAULT_BATCH_SIZE as QUERY_BATCH_SIZE

METHOD = "sac"
FORMAT = 5
"""Key format: 2 adds ``temperature`` (a format-1 key, without it, compares plain probabilities: temperature 1), 3
adds ``decide_on`` (a format-1 or 2 key decides on probabilities), 4 ``calibrated_on`` (the calibration models by
kind, ``CALIBRATION_KINDS``) and the scratch negatives' ``scratch_epochs`` (a key of format 1-3 is read as before), 5
``statistic`` (a key of format 1-4 compares correlation matrices)."""
DEFAULT_VARIANT = "m"
PAPER_N = 100
MIN_KEPT = 10
"""The fewest queries of a key worth writing: C has n (n - 1) / 2 free pairs, and the paper uses 100."""
DEFAULT_PATCH = 0.5
DEFAULT_MAX_P_VALUE = 0.01
PAPER_TEMPERATURE = 1.0
"""Temperature 1: the probabilities themselves, the closest an API gives to the authors' logits (SAC-m's default)."""
SHARP_TEMPERATURE = 0.1
"""SAC-w's default temperature: its screened images are those a thief's copy must answer as the source does."""
SCREENS = ("minority", "wrong", "none", "rare")
"""SAC-w's screen of the source's errors by independent models (``screened``): nnmark's, the paper's, none; or their
order (``rarest``): those whose source label the independent models give least first."""
DEFAULT_SCREEN = "minority"
DEFAULT_SCRATCH_NEGATIVES = 20
"""From-scratch models of the source's recipe added to the calibration: with ``nnmark bench ownership``'s 3 families,
K = 23 models (study above)."""
SCRATCH_EPOCHS = DEFAULT_EPOCHS
"""Training epochs of each scratch negative: the shadow pools' default (``nnmark mark``'s --shadow-epochs)."""
SCRATCH_DEVICE = "cpu"
"""Where the scratch negatives train unless told (``nnmark mark sac --device`` tells); they come back to the CPU,
where the key is made."""
SCRATCH_SEEDS = 4_000_000
"""How far above the key's seed the scratch negatives' seeds start (model i: ``seed + SCRATCH_SEEDS + i``), apart from
the pools' seeds, ``DISTILLED_SEEDS`` and the bench's (``bench.thefts.THEFT_SEEDS``, its independents' 1000 (s + 1) +
...): no scratch negative starts from the initial weights of another model it is compared with."""
DEFAULT_DISTILLED_NEGATIVES = 0
"""Students of the families added to the calibration: none by default (they spread less than from-scratch models of
the source's recipe, so a null fitted on them is too narrow; study above)."""
CALIBRATION_KINDS = ("families", "scratch", "extra", "distilled")
"""The calibration models of a key by kind, in the order of its distances: one per family of the pools' negatives
(``one_per_family``), the scratch negatives, the caller's ``extra_negatives``, the distilled negatives."""
FAMILY_COSINE = 0.5
"""Parameters this alike (cosine) make two models one family: an eq. 1 copy keeps about 0.9 of its base's, independent
initialisations about 0.01."""
DISTILL_EPOCHS = 4
DISTILLED_SEEDS = 3_000_000
"""How far above the key's seed the distilled negatives' seeds start (student i: ``seed + DISTILLED_SEEDS + i``). A
student is initialised from its seed as a from-scratch model of that seed is, so these stay clear of the pools' seeds
(the source's seed s, s + j, ``shadow.VARIANT_SEEDS`` + ...) and the bench's thieves' (``bench.thefts.THEFT_SEEDS``):
no student starts from the initial weights of its teacher or of another calibration or screening model."""
TINY = torch.finfo(torch.float32).tiny
"""Probabilities are clamped to this before the log: a float32 API returns exact zeros."""
OUTPUTS = ("probabilities", "labels")
"""The outputs a key is calibrated for: (sharpened) probability vectors, and one-hot labels for a labels-only
oracle."""
DEFAULT_DECIDE_ON = "probabilities"
"""The output that decides for a probabilities oracle unless a key says otherwise."""
STATISTICS = ("correlation", "agreement")
"""How a suspect's outputs are compared with the source's: their correlation matrices (``correlation_distance``, the
paper's) or the suspect's mass on the source's labels (``agreement_distance``)."""
DEFAULT_STATISTIC = "correlation"


def cutmix_queries(x: torch.Tensor, n: int, *, patch: float, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """SAC-m's inputs: n CutMix images from x (N, C, H, W), N >= 2; returns (queries, index of each base image).

    Each query is a base image x_a with the square patch of side round(patch * min(H, W)) at a uniformly
    drawn position replaced by the same patch of a donor x_b, b != a; a and b are drawn by ``generator``.
    """
    if not 0 < patch <= 1:
        raise ArgumentError(f"patch must lie in (0, 1], got {patch}")
    if len(x) < 2:
        raise InputError(f"CutMix needs at least 2 images, got {len(x)}")
    _, _, h, w = x.shape
    side = max(1, round(patch * min(h, w)))
    a = torch.randint(len(x), (n,), generator=generator)
    b = (a + torch.randint(1, len(x), (n,), generator=generator)) % len(x)
    top = torch.randint(h - side + 1, (n, 1), generator=generator)
    left = torch.randint(w - side + 1, (n, 1), generator=generator)
    rows = (torch.arange(h) >= top) & (torch.arange(h) < top + side)
    cols = (torch.arange(w) >= left) & (torch.arange(w) < left + side)
    box = (rows[:, :, None] & cols[:, None, :])[:, None].to(x.dtype)
    return x[a] * (1 - box) + x[b] * box, a


def misclassified_queries(y: torch.Tensor, predicted: torch.Tensor, n: int, *,
                          generator: torch.Generator) -> torch.Tensor:
    """SAC-w's inputs: the indices (at most n, in a seeded random order) of images whose true label ``y`` the
    source's ``predicted`` label misses."""
    order = torch.randperm(len(y), generator=generator)
    return order[predicted[order] != y[order]][:n]


def screened(rule: str, source_labels: torch.Tensor, screening_labels: Sequence[torch.Tensor],
             y: torch.Tensor) -> torch.Tensor:
    """SAC-w's screen of candidates (N,) whose true labels are ``y``, by independent models' labels (each (N,)):
    "minority" keeps those whose source label fewer than half of the models give (the source decides unlike most
    independent models), "wrong" those that most of the models misclassify too (the paper's), "none" all."""
    if rule == "none":
        return torch.ones(len(y), dtype=torch.bool)
    if rule not in ("minority", "wrong") or not screening_labels:
        raise ArgumentError(f"a screen of labels is minority, wrong or none and needs an independent model, got "
                            f"{rule!r} with {len(screening_labels)}")
    said = torch.stack(list(screening_labels))
    if rule == "minority":
        return (said == source_labels).double().mean(dim=0) < 0.5
    return (said != y).double().mean(dim=0) > 0.5


def rarest(source_labels: torch.Tensor, screening_probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """The "rare" screen: the order of candidates (N,) by the mean probability the independent models (each (N, K))
    give the source's label, least first (ties in the candidates' order)."""
    if not screening_probabilities:
        raise ArgumentError("the rare screen needs an independent model")
    given = torch.stack([p.double().gather(1, source_labels[:, None])[:, 0] for p in screening_probabilities])
    return torch.sort(given.mean(dim=0), stable=True).indices


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels (n,) as one-hot rows (n, K) in float64: the outputs of a labels-only model."""
    return nn.functional.one_hot(labels, num_classes).double()


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T) per row, in float64; T = 1 returns p itself.

    log p = z - logsumexp(z) for logits z, so this is softmax(z / T) whatever per-sample constant the logits
    carry: the same from logits, probabilities or any per-row shift of the logits. Zeros are clamped to ``TINY``.
    """
    p = probabilities.double()
    if temperature == 1:
        return p
    return torch.softmax(p.clamp_min(TINY).log() / temperature, dim=1)


def correlation_matrix(outputs: torch.Tensor) -> torch.Tensor:
    """C_ij = cos(O_i, O_j) for the rows O_i of ``outputs`` (n, K), in float64; an all-zero row has cos 0."""
    if outputs.dim() != 2:
        raise ArgumentError(f"outputs must be (n, K), got shape {tuple(outputs.shape)}")
    unit = nn.functional.normalize(outputs.double(), dim=1)
    return unit @ unit.T


def correlation_distance(c_a: torch.Tensor, c_b: torch.Tensor) -> float:
    """d = ||C_a - C_b||_1 / n^2: the mean absolute difference of two n x n correlation matrices."""
    if c_a.shape != c_b.shape or c_a.dim() != 2 or c_a.shape[0] != c_a.shape[1]:
        raise ArgumentError(f"need two n x n matrices of one shape, got {tuple(c_a.shape)} and {tuple(c_b.shape)}")
    return float((c_a - c_b).abs().mean())


def agreement_distance(source: torch.Tensor, suspect: torch.Tensor) -> float:
    """d = 1 - mean_i suspect_i[l_i] for the source's labels l_i = argmax of its rows: one minus the suspect's mean
    mass (probability, or 1 for the same label) on the source's labels; both (n, K)."""
    if source.shape != suspect.shape or source.dim() != 2:
        raise ArgumentError(f"need two (n, K) outputs of one shape, got {tuple(source.shape)} and "
                            f"{tuple(suspect.shape)}")
    return 1.0 - float(suspect.double().gather(1, source.argmax(dim=1, keepdim=True)).mean())


def fingerprints(probabilities: torch.Tensor, temperature: float,
                 statistic: str = DEFAULT_STATISTIC) -> dict[str, torch.Tensor]:
    """What ``distance`` compares, per output in ``OUTPUTS``, from a model's probabilities (n, K) on the queries:
    the probabilities sharpened at ``temperature`` and the one-hot labels, as their correlation matrices C for the
    correlation statistic, as they are for the agreement one."""
    outputs = {"probabilities": sharpen(probabilities, temperature),
               "labels": one_hot(probabilities.argmax(dim=1), probabilities.shape[1])}
    if statistic == "agreement":
        return outputs
    return {out: correlation_matrix(o) for out, o in outputs.items()}


def distance(statistic: str, source: torch.Tensor, suspect: torch.Tensor) -> float:
    """The ``statistic``'s distance of two ``fingerprints`` of one output: smaller is closer."""
    return (agreement_distance if statistic == "agreement" else correlation_distance)(source, suspect)


def calibrate(distances: Sequence[float]) -> dict:
    """The decision's calibration from K >= 2 independent models' distances d_k: threshold tau = min_k d_k,
    mu = their mean, s = their sample standard deviation (> 0, ``stats.normal_fit``), and the distances themselves."""
    d = [float(v) for v in distances]
    mean, std = normal_fit(d)
    return {"threshold": min(d), "mean": mean, "std": std, "distances": d}


def p_values(d: float, calibration: dict) -> tuple[float, float]:
    """(fitted, empirical) p-values of distance d: P[T_{K-1} <= (d - mu) / (s sqrt(1 + 1/K))]
    (``stats.predictive_tail``) and (1 + #{d_k <= d}) / (1 + K)."""
    distances = calibration["distances"]
    k = len(distances)
    return (predictive_tail(d, calibration["mean"], calibration["std"], k),
            (1 + sum(v <= d for v in distances)) / (1 + k))


def judge(d: float, calibration: dict, max_p_value: float) -> dict:
    """The decision on distance d: match iff d < tau and the fitted p-value < max_p_value; with both p-values."""
    fitted, empirical = p_values(d, calibration)
    return {"distance": d, "match": d < calibration["threshold"] and fitted < max_p_value, "p_value": fitted,
            "p_value_empirical": empirical, "threshold": calibration["threshold"]}


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A local model's probabilities on x, as a ``TorchOracle`` (what a verifier asks) gives them: on the model's
    device, in micro-batches of ``TorchOracle``'s default size."""
    return TorchOracle(model.eval(), tuple(x.shape[1:]), num_classes, batch_size=QUERY_BATCH_SIZE,
                       device=device_of(model)).probabilities(x)


def _labels(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A local model's top-1 labels on x, as a verifier's oracle gives them."""
    return _probabilities(model, x, num_classes).argmax(dim=1)


def _distances(source: dict[str, torch.Tensor], models: Sequence[nn.Module], x: torch.Tensor, num_classes: int,
               temperature: float, statistic: str) -> dict[str, list[float]]:
    """Each model's distance to the source's fingerprints, per output."""
    found = [fingerprints(_probabilities(m, x, num_classes), temperature, statistic) for m in models]
    return {out: [distance(statistic, source[out], f[out]) for f in found] for out in OUTPUTS}


def _owner_dataset(images: torch.Tensor, num_classes: int, dataset: data.Dataset | None, meta: dict) -> data.Dataset:
    """``dataset``, else the dataset ``meta["data"]`` names, whose training images must be ``images`` (the ones the
    caller gave)."""
    if dataset is None:
        if "data" not in meta:
            raise ArgumentError("SAC draws its queries from held-out images: pass dataset")
        dataset = data.load_for(meta["data"], ModelCard(tuple(images.shape[1:]), num_classes))
        _owner_split(images, dataset)
    return dataset


def _owner_split(images: torch.Tensor, dataset: data.Dataset) -> data.Split:
    """``dataset``'s training split, checked to hold ``images`` (the owner's, which the caller gave)."""
    if dataset.train.x.shape != images.shape or not torch.equal(dataset.train.x, images):
        raise InputError(f"the training images given are not those of {dataset.name}; pass the owner's dataset")
    return dataset.train


def _queries(source: nn.Module, pool: data.Split, variant: str, n: int, patch: float, num_classes: int,
             screen: str, screening: Sequence[nn.Module],
             generator: torch.Generator) -> tuple[torch.Tensor, dict, dict]:
    """The variant's queries from the natural ``pool``, its extras and its config entries; SAC-w keeps the images the
    source misclassifies that pass the ``screen`` of the ``screening`` models."""
    if variant == "m":
        x, base = cutmix_queries(pool.x, n, patch=patch, generator=generator)
        return x, {"sources": pool.x[base].contiguous()}, {"patch": float(patch), "candidates": len(pool)}
    predicted = _labels(source, pool.x, num_classes)
    wrong = misclassified_queries(pool.y, predicted, len(pool), generator=generator)
    if screen == "rare":
        passed = torch.ones(len(wrong), dtype=torch.bool)
        wrong = wrong[rarest(predicted[wrong], [_probabilities(m, pool.x[wrong], num_classes) for m in screening])]
    else:
        passed = screened(screen, predicted[wrong], [_labels(m, pool.x[wrong], num_classes) for m in screening],
                          pool.y[wrong])
    kept = wrong[passed][:n]
    return pool.x[kept], {}, {"candidates": len(pool), "misclassified": len(wrong), "screen": screen,
                              "screened": int(passed.sum())}


def one_per_family(negatives: Sequence[nn.Module]) -> list[nn.Module]:
    """The models less those whose parameters are a near copy (cosine > ``FAMILY_COSINE``) of an earlier one's: the
    noised and fine-tuned copies of ``shadow.pool_specs``' families, which are not independent draws of the null."""
    kept: list[tuple[nn.Module, torch.Tensor]] = []
    for model in negatives:
        w = torch.cat([p.detach().flatten().double() for p in model.parameters()])
        if not any(len(v) == len(w) and nn.functional.cosine_similarity(v, w, dim=0) > FAMILY_COSINE
                   for _, v in kept):
            kept.append((model, w))
    return [model for model, _ in kept]


def distill_negatives(teachers: Sequence[nn.Module], images: torch.Tensor, k: int, *, epochs: int,
                      seed: int) -> list[nn.Module]:
    """k independent models of the hardest kind: students of the teachers' architecture distilled (T = 3, soft
    labels only) from the ``teachers`` in turn on the owner's ``images``, student i from seed ``seed +
    DISTILLED_SEEDS + i``."""
    if k and not teachers:
        raise ArgumentError("distilled negatives need at least one independent teacher")
    students = []
    for i in range(k):
        teacher = teachers[i % len(teachers)].eval()
        with torch.no_grad():
            y = torch.cat([teacher(batch).argmax(dim=1) for batch in images.split(1000)])
        students.append(distill(teacher, images, y, temperature=SOK_TEMPERATURE, alpha=1.0, epochs=epochs,
                                seed=seed + DISTILLED_SEEDS + i).eval())
    return students


def scratch_models(source: nn.Module, owner: data.Split, k: int, *, epochs: int, seed: int,
                   device: str = SCRATCH_DEVICE) -> list[nn.Module]:
    """k independent models of the source's own recipe: its architecture re-initialised (``fresh_copy``) and trained
    from scratch (``models.training.train``) for ``epochs`` on the owner's labelled split, model i from seed ``seed +
    SCRATCH_SEEDS + i``; trained on ``device`` and returned on the CPU, where the key is made."""
    return [train(fresh_copy(source, s).to(device), owner, epochs=epochs, seed=s).eval().cpu()
            for s in range(seed + SCRATCH_SEEDS, seed + SCRATCH_SEEDS + k)]


def scratch_specs(negative: ShadowSpec, k: int, *, epochs: int, seed: int) -> list[ShadowSpec]:
    """The k scratch negatives as shadow specs, for ``shadow.build_pool`` to train and cache beside the pools (``nnmark
    mark sac``: a second key of the source reuses them): the recipe of ``negative``, a from-scratch spec of the
    source's pools (architecture, data, card, micro-batch), model i from seed ``seed + SCRATCH_SEEDS + i`` for
    ``epochs``."""
    if negative.augmented:
        raise ArgumentError("scratch negatives follow a from-scratch spec, not an augmented one")
    return [dataclasses.replace(negative, seed=s, epochs=epochs) for s in range(seed + SCRATCH_SEEDS,
                                                                               seed + SCRATCH_SEEDS + k)]


def create(
    source: nn.Module,
    pools: Pools,
    images: torch.Tensor,
    *,
    variant: Literal["m", "w"] = DEFAULT_VARIANT,
    n: int = PAPER_N,
    patch: float = DEFAULT_PATCH,
    temperature: float | None = None,
    screen: Literal["minority", "wrong", "none", "rare"] = DEFAULT_SCREEN,
    scratch_negatives: int = DEFAULT_SCRATCH_NEGATIVES,
    scratch_epochs: int = SCRATCH_EPOCHS,
    distilled_negatives: int = DEFAULT_DISTILLED_NEGATIVES,
    distill_epochs: int = DISTILL_EPOCHS,
    max_p_value: float = DEFAULT_MAX_P_VALUE,
    decide_on: Literal["probabilities", "labels"] = DEFAULT_DECIDE_ON,
    statistic: Literal["correlation", "agreement"] = DEFAULT_STATISTIC,
    seed: int = 0,
    dataset: data.Dataset | None = None,
    extra_negatives: Sequence[nn.Module] | None = None,
    scratch: Sequence[nn.Module] | None = None,
    device: str = SCRATCH_DEVICE,
    model_digest: str = "",
    meta: dict | None = None,
) -> KeyFile:
    """Make a SAC key: n queries of ``variant``, the source's probabilities on them, calibrated on
    independent models; see the module docstring.

    ``images``: the owner's training images (N, C, H, W) in [0, 1], those the pools trained on; the queries are
    drawn from the natural pool of ``dataset`` (None: the dataset ``meta["data"]`` names, checked against
    ``images``; scratch negatives need ``images`` to be its training images, whose labels they learn).
    ``extra_negatives``: more independent models to calibrate on (e.g. distillations the caller made). ``scratch``:
    the ``scratch_negatives`` models ``scratch_models(source, owner split, scratch_negatives, epochs=scratch_epochs,
    seed=seed)`` gives, made once by a caller that makes several keys of one source (None: trained here, on
    ``device``; the key is made on the CPU). Raises
    NnmarkError when fewer than ``MIN_KEPT`` queries are found (SAC-w: the source misclassifies too few held-out
    images) or when even the source itself could not match.

    Args:
        variant: "m" (SAC-m: CutMix images) or "w" (SAC-w: natural images the source misclassifies).
        n: most queries kept in the key.
        patch: SAC-m's patch side, as a fraction of the image side.
        temperature: compare probabilities sharpened to softmax(log p / temperature) (default: 1, the
            probabilities, for SAC-m; 0.1 for SAC-w).
        screen: SAC-w's screen by the pools' validation negatives, which then leave the calibration: minority
            (the source's label is given by fewer than half of them), wrong (most misclassify too: the paper's),
            none, or rare (the n errors whose source label they give the least mean probability).
        scratch_negatives: models of the source's recipe (its architecture, the owner's images and labels, seeds of
            their own) trained from scratch and added to the calibration: what keeps the stated false-claim bound.
        scratch_epochs: training epochs of each scratch negative: the pools' (the CLI's --shadow-epochs).
        distilled_negatives: students distilled from the train negatives' families (``one_per_family``), added to
            the calibration.
        distill_epochs: training epochs of each distilled negative.
        max_p_value: a match needs the fitted p-value of its distance below this.
        decide_on: the output that decides when the suspect gives probabilities: probabilities (sharpened), or
            their one-hot labels (a labels-only suspect is always judged on those).
        statistic: correlation (the distance of the correlation matrices: the paper's) or agreement (one minus
            the suspect's mean mass on the source's labels; needs decide_on labels).
        seed: draws the CutMix images, or the order in which misclassified images are kept.
    """
    if images.dim() != 4:
        raise InputError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    check_inputs(images, tuple(images.shape[1:]))
    if n < MIN_KEPT or not 0 < max_p_value < 1 or variant not in ("m", "w"):
        raise ArgumentError(f"need n >= {MIN_KEPT}, max_p_value in (0, 1) and variant m or w, got {n}, {max_p_value}, "
                            f"{variant!r}")
    if temperature is None:
        temperature = SHARP_TEMPERATURE if variant == "w" else PAPER_TEMPERATURE
    if not (math.isfinite(temperature) and temperature > 0) or min(distilled_negatives, scratch_negatives) < 0 or (
            min(distill_epochs, scratch_epochs) < 1 or screen not in SCREENS or decide_on not in OUTPUTS):
        raise ArgumentError(f"need temperature > 0, scratch_negatives and distilled_negatives >= 0, their epochs >= 1, "
                            f"a screen of {', '.join(SCREENS)} and decide_on one of {', '.join(OUTPUTS)}, got "
                            f"{temperature}, {scratch_negatives}, {distilled_negatives}, {scratch_epochs}, "
                            f"{distill_epochs}, {screen!r}, {decide_on!r}")
    if not _statistic_fits(statistic, decide_on):
        raise ArgumentError(f"statistic is one of {', '.join(STATISTICS)}, and agreement decides on labels (a "
                            f"suspect's mass on the source's labels grows with its confidence), got {statistic!r} "
                            f"deciding on {decide_on!r}")
    if scratch is not None and len(scratch) != scratch_negatives:
        raise ArgumentError(f"{len(scratch)} scratch models given for scratch_negatives = {scratch_negatives}")
    meta = dict(meta or {})
    with torch.no_grad():
        num_classes = int(source.eval()(images[:1]).shape[1])
    dataset = _owner_dataset(images, num_classes, dataset, meta)
    pool = natural_pool(dataset)
    screening = list(pools.negatives_val) if variant == "w" and screen != "none" else []
    x, extras, found = _queries(source, pool, variant, n, patch, num_classes, screen, screening,
                                torch.Generator().manual_seed(seed))
    if len(x) < MIN_KEPT:
        raise NnmarkError(f"only {len(x)} SAC-{variant} queries found, fewer than {MIN_KEPT}: too few held-out "
                          "images the source misclassifies (and the screen keeps); use variant m or --screen none")
    probabilities = _probabilities(source, x, num_classes)
    own = fingerprints(probabilities, temperature, statistic)
    families = one_per_family(pools.negatives_train)
    kinds = {"families": one_per_family([*families, *(pools.negatives_val if not screening else ())]),
             "scratch": list(scratch) if scratch is not None else scratch_models(
                 source, _owner_split(images, dataset) if scratch_negatives else dataset.train, scratch_negatives,
                 epochs=scratch_epochs, seed=seed, device=device),
             "extra": list(extra_negatives or ()),
             "distilled": distill_negatives(families, images, distilled_negatives, epochs=distill_epochs, seed=seed)}
    negatives = [m for kind in CALIBRATION_KINDS for m in kinds[kind]]
    calibration = {out: calibrate(d) for out, d in _distances(own, negatives, x, num_classes, temperature,
                                                               statistic).items()}
    for out, cal in calibration.items():
        if not judge(0.0, cal, max_p_value)["match"]:
            raise NnmarkError(f"the {out} calibration distances (mean {cal['mean']:.3g}, sd {cal['std']:.3g}) are too "
                              f"spread for even the source to reach p < max_p_value = {max_p_value:g}; use more "
                              "calibration models or a larger max_p_value")
    config = {
        "format": FORMAT, "variant": variant, "n": int(n), "kept": len(x), "seed": int(seed),
        "num_classes": num_classes, "temperature": float(temperature), "decide_on": decide_on, "statistic": statistic,
        "screening_models": len(screening), "max_p_value": float(max_p_value), "calibration_models": len(negatives),
        "family_copies_left_out": len(pools.negatives_train) - len(families),
        "calibrated_on": {kind: len(kinds[kind]) for kind in CALIBRATION_KINDS}, "scratch_epochs": int(scratch_epochs),
        "distilled_negatives": int(distilled_negatives), "extra_negatives": len(extra_negatives or ()),
        "calibration": calibration, "p_value": "student-t",
        "derived_distances": _distances(own, [*pools.positives_train, *pools.positives_val], x, num_classes,
                                        temperature, statistic),
        **found,
    }
    if clash := sorted(set(meta) & set(config)):
        raise ArgumentError(f"meta may not replace the method's own config entries: {', '.join(clash)}")
    config.update(meta)
    note_shortfall(config, n, len(x), f"the source misclassifies only {found.get('misclassified')} of {len(pool)} "
                   f"held-out images, {len(x)} of them kept by the screen {screen}")
    return KeyFile(method=METHOD, config=config, queries=x.float().contiguous(),
                   expected=probabilities.argmax(dim=1).contiguous(),
                   extras={"probabilities": probabilities.float().contiguous(), **extras}, model_digest=model_digest)


def _calibration(key: KeyFile, out: str) -> dict:
    """The key's calibration for output ``out``, checked (KeyFileError when missing or malformed)."""
    try:
        cal = key.config["calibration"][out]
        parsed = {name: float(cal[name]) for name in ("threshold", "mean", "std")}
        parsed["distances"] = [float(v) for v in cal["distances"]]
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"{METHOD} key config lacks a numeric {out} calibration") from None
    if len(parsed["distances"]) < 2 or not parsed["std"] > 0:
        raise KeyFileError(f"{METHOD} key's {out} calibration needs >= 2 distances and a std > 0")
    _check_kinds(key.config, len(parsed["distances"]))
    return parsed


def _check_kinds(config: dict, k: int) -> None:
    """KeyFileError unless ``calibrated_on`` counts the key's k calibration models by kind (``CALIBRATION_KINDS``);
    a key of format 1-3 has none."""
    counts = config.get("calibrated_on")
    fmt = config.get("format")
    if counts is None and not (isinstance(fmt, int) and fmt >= 4):
        return
    if not (isinstance(counts, dict) and sorted(counts) == sorted(CALIBRATION_KINDS) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())
            and sum(counts.values()) == k):
        raise KeyFileError(f"{METHOD} key's calibrated_on must count its {k} calibration models by kind "
                           f"({', '.join(CALIBRATION_KINDS)})")


def _temperature(key: KeyFile) -> float:
    """The key's temperature: ``PAPER_TEMPERATURE`` for a format-1 key (it has none), else a number > 0."""
    try:
        temperature = float(key.config.get("temperature", PAPER_TEMPERATURE))
    except (TypeError, ValueError):
        raise KeyFileError(f"{METHOD} key config has a non-numeric temperature") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise KeyFileError(f"{METHOD} key config has a temperature that is not a finite number > 0")
    return temperature


def _decide_on(key: KeyFile) -> str:
    """The output that decides for a probabilities oracle: "probabilities" for a format-1 or 2 key (it has none)."""
    decide_on = key.config.get("decide_on", "probabilities")
    if decide_on not in OUTPUTS:
        raise KeyFileError(f"{METHOD} key config has decide_on {decide_on!r}, not one of {', '.join(OUTPUTS)}")
    return decide_on


def _statistic_fits(statistic: str, decide_on: str) -> bool:
    """Whether ``statistic`` is one of ``STATISTICS`` and may decide on the output ``decide_on``: agreement only on
    labels (a suspect's mass on the source's labels grows with its confidence)."""
    return statistic in STATISTICS and (statistic != "agreement" or decide_on == "labels")


def _statistic(key: KeyFile, decide_on: str) -> str:
    """How the key compares outputs: "correlation" for a key of format 1-4 (it has none); agreement decides on
    labels."""
    statistic = key.config.get("statistic", "correlation")
    if not _statistic_fits(statistic, decide_on):
        raise KeyFileError(f"{METHOD} key config has statistic {statistic!r} deciding on {decide_on!r}: need one of "
                           f"{', '.join(STATISTICS)}, and agreement decides on labels")
    return statistic


def _source_outputs(key: KeyFile) -> torch.Tensor:
    """The source's probabilities kept in the key, checked against its queries and expected labels."""
    p = key.extras.get("probabilities")
    n = len(key.expected)
    if p is None or p.dim() != 2 or len(p) != n or not p.is_floating_point() or (p < 0).any() or (p > 1).any():
        raise KeyFileError(f"{METHOD} key lacks the source's probabilities (n, K) in [0, 1] for its {n} queries")
    if not torch.equal(p.argmax(dim=1), key.expected):
        raise KeyFileError(f"{METHOD} key's expected labels are not the argmax of its probabilities")
    return p


def verify(oracle: Oracle, key: KeyFile) -> Verdict:
    """The suspect's distance to the source on the key's queries (the key's ``statistic``), and the decision.

    Probabilities when the oracle gives them (the one-hot result in ``details["labels"]``) unless the key's
    ``decide_on`` is "labels" (the probabilities' result then in ``details["probabilities"]``), else labels.
    "match" (passed) iff d < the key's threshold and the fitted p-value < its max_p_value. ``flipped``: queries the
    suspect labels otherwise than the source (not what decides).
    """
    if key.method != METHOD:
        raise KeyFileError(f"not a {METHOD} key (method {key.method!r})")
    try:
        max_p_value = float(key.config["max_p_value"])
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"{METHOD} key config lacks a numeric max_p_value") from None
    if not 0 < max_p_value < 1:
        raise KeyFileError(f"{METHOD} key config has max_p_value outside (0, 1)")
    temperature, decide_on = _temperature(key), _decide_on(key)
    statistic = _statistic(key, decide_on)
    own = fingerprints(_source_outputs(key), temperature, statistic)
    before = oracle.queries
    if oracle.can("probabilities"):
        outputs = oracle.probabilities(key.queries)
        labels, theirs = outputs.argmax(dim=1), fingerprints(outputs, temperature, statistic)
    else:
        labels = oracle.labels(key.queries)
        theirs = {"labels": fingerprints(one_hot(labels, oracle.num_classes), temperature, statistic)["labels"]}
    results = {out: judge(distance(statistic, own[out], theirs[out]), _calibration(key, out), max_p_value)
               for out in theirs}
    used = decide_on if decide_on in results else "labels"
    main = results.pop(used)
    return Verdict(
        method=key.method, decision="match" if main["match"] else "no match", passed=main["match"],
        statistic_name=f"{statistic}_distance", statistic=main["distance"],
        flipped=torch.nonzero(labels != key.expected).flatten().tolist(), queries=oracle.queries - before,
        details={"output": used, **main, "max_p_value": max_p_value, "variant": key.config.get("variant"),
                 "temperature": temperature, "statistic": statistic, **results},
    )


SPECS = (MethodSpec(
    METHOD, "ownership", "SAC sample-correlation fingerprint of distilled and extracted copies (Guan et al.)",
    create_access="probabilities", verify_access="labels", embeds=False, verdicts=("match", "no match"),
    verify=verify, create=create, inputs="shadow", shows=("variant", "kept"), whole_key=True,
),)
