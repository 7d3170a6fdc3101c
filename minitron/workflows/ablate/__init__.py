"""The paper's findings at small scale: eight studies on one tiny teacher, each cell cached, one results page.

`cells` computes and caches one (setting, seed) at a time, `studies` groups them and runs the job, `page` writes
the results page and its plots from the cells alone.

Studies (`configs/ablate.yaml` sets the teacher, the shapes and the token budget):

- `criteria`  importance criteria without retraining at each shape of `criteria.shapes` (the width shape by
              default): activation scores under the (batch, sequence) aggregation pairs of `criteria.aggregations`
              (all nine by default), weight magnitude and random scores -> validation loss (Table 13); a shape that
              only sets the number of layers compares the depth criteria of `criteria.depth` (Block Importance,
              skip-one-layer loss, the least-loss contiguous block) with magnitude and random layers;
- `shapes`    width vs depth vs width+depth at about the same parameter count -> validation loss before and after
              the same distillation budget, with the validation curve during retraining (Table 10);
- `losses`    the retraining loss: forward KL vs cross-entropy vs KL+CE vs KL+intermediate states (Table 15);
- `scratch`   pruned+distilled vs the same architecture from random init on the same tokens and on 4x (Table 11);
- `iterative` importance estimated in 1, 2 or 4 pruning steps; the 15B -> 8B -> 4B style chain; one-shot pruning
              vs two steps that split the budget, all at the same final shape;
- `depth`     the depth shape by individually chosen layers vs the contiguous block (the 2408 paper);
- `correction` the width student distilled on a corpus unlike the teacher's (`correction.data`), from the teacher
              as it is vs the teacher first corrected on that corpus (the 2408 paper's teacher correction);
- `shapes_long` width vs depth retrained for `budget.long_steps`, past the step where the paper's curves cross.

`teacher.path` may name a packaged pretrained model: `setup=smollm2_135m` (configs/setup/) runs the criteria
study on SmolLM2-135M at three shapes and writes the criteria page (`page_layout=criteria`, `criteria_page`).

A cell is one (setting, seed); its result is a JSON file under `results_dir/cells/`, keyed by everything that
decides it, so a re-run (or a Hydra multirun over `study` and `seed`) skips finished cells and cells shared by
studies (the width student distilled with forward KL appears in four) are computed once. After every job the
results page is rebuilt from all cells present: each table with mean and spread over seeds, the plots, the
command, the compute, and the paper's finding beside ours.
"""

from minitron.workflows.ablate.cells import AGGREGATORS, LOSSES, SHAPES, Context, cell_specs, load_cells
from minitron.workflows.ablate.page import crossover, mean_curve, plot_criteria, plot_curves, write_results
from minitron.workflows.ablate.studies import STUDIES, run_ablate, run_study

__all__ = [
    "AGGREGATORS", "LOSSES", "SHAPES", "STUDIES", "Context", "cell_specs", "crossover", "load_cells", "mean_curve",
    "plot_criteria", "plot_curves", "run_ablate", "run_study", "write_results",
]
