"""Benchmarks: ``python -m benchmarks [--quick] [--out reports/benchmarks.md] [--scaling]``.

Prints and writes a Markdown report (machine, torch, threads, device, date; one table row per
measurement: name, measured value, goal, ratio, PASS/FAIL) and logs the same numbers to MLflow
(child run ``benchmark``, the report as an artifact). Every measurement uses the model of
``params.yaml`` (``pipeline.train.build_model``), batch ``train.batch_size``, seeded random 32x32
images, and trains through the pipeline's own seam, ``pipeline.train.train_one_epoch``:

1. SAM training step / full fine-tuning step (same model, batch, Adam; SAM with the two Adam groups
   of ``pipeline/methods/sam.py``) at the largest and smallest sparsity of ``adapt.sparsities``; a
   step is ``train_one_epoch`` over one batch.
2. SAM switch off+on on a model with an installed stored state (flags, plus the weight lookup the
   next forward does, i.e. everything that makes that forward correct); against reloading the
   base ``state_dict`` from disk; swapping two domains' stored states.
3. Stored SAM bytes / (gamma * fp32 base bytes) at every sparsity (state from a short real
   training): its tensor data judged against the budget, its safetensors header (layer table,
   digests) allowed up to 4 KiB; the whole-file ratio and the memory cost % beside it.
4. ``pipeline.train.fit`` (as the pretrain stage calls it, one epoch) against ``train_one_epoch``
   alone on the same data: what fit's checkpointing and history cost an epoch.
5. Inference with a stored SAM switched on against the base model.
6. Pretraining images/s by ``train.precision``: bf16 against fp32 (goal 1.5x), and on the CPU fp32
   with channels_last against contiguous; the base test PSNR of both precisions after one fixed
   budget on builtin thumbnails (goal: within 0.1 dB); achieved GFLOP/s (multiply-adds counted over
   the conv layers) against the CPU's peak estimated from its /proc/cpuinfo flags and clock.
7. ``--scaling``: ``dvc repro`` from clean of the tiny config (``profiles/tiny.yaml``) at several
   pipeline sizes in a temporary copy of the working tree, a least-squares fit, and (always) the
   last real quick execution's per-stage durations read from ``mlflow.db`` (``search_runs``),
   against the stage cells ``dvc`` lists for the quick profile.
8. With CUDA: the step, pretraining, inference and bf16/fp32 ratios on the GPU (paper profile's
   width and precision). ``python -m benchmarks.gpu`` adds the paper profile's pretraining and a
   sweep of adapt cells on Ray; it skips with one line without CUDA.

Timing (``benchmarks.timing``): the machine is shared (2 cores, other jobs), so no absolute number
is trusted alone. Candidates run in interleaved blocks whose order rotates every repeat (A B, B A,
B A, A B ...), so load changes hit both sides; a ratio is the median over repeats of the per-repeat
ratio, and times are medians. CPU measurements run with one torch thread by default
(``--threads``): with two OpenMP threads on two shared cores, per-call times swing 2-4x and even
same-code A/A ratios came out up to 20 % off, against about 1 % with one thread. Tests check
correctness only, never speed.

Modules: ``timing`` (the harness), ``micro`` (measurements 1-5), ``throughput`` (measurement 6, the
multiply-add counter, the CPU's peak), ``rows`` (their report rows and the GPU rows), ``history``
(MLflow and DVC), ``scaling``, ``report`` (rows, Markdown), ``main``, ``gpu`` (the GPU script).
"""
