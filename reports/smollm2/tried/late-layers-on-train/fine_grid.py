"""A finer strength grid where run.py's frontiers cross the bounds (TRAIN prompts only):
keyword at layers 24 and 27 between s = 1 and 1.5, French at layer 18 between 0.5 and 1.

    python reports/smollm2/tried/late-layers-on-train/fine_grid.py   # ~3 min; prints the frontiers

Its output is in results.md ("Finer grid").
"""
import torch, time
from pysteer.discovery import instruction_vectors
from pysteer.evaluation import builtin_prompts
from pysteer.experiment import get_type
from pysteer.experiment.frontier import REPORT_BOUNDS, best_point, format_frontier, sweep
from pysteer.experiment.pipeline import Budget, discovery_queries
from pysteer.models import load_model
torch.manual_seed(0)
b=Budget.report(); model,tok=load_model(device="cpu")
for name, layers, strengths in [("keyword",(24,27),(1.1,1.2,1.3,1.4)),("french",(18,),(0.6,0.7,0.8,0.9))]:
    it=get_type(name); train=builtin_prompts("train",[it.instruction_id])[:b.validation]
    vs=instruction_vectors(model,tok,it.instruction_text,list(layers),discovery_queries(),n_prompts=b.n_pairs,batch_size=b.batch_size,progress=False)
    for l in layers:
        f=sweep(model,tok,vs[l].spec("add"),train,strengths,max_new_tokens=b.eval_max_new_tokens,label=f"l{l}")
        _,p=best_point({l:f},REPORT_BOUNDS)
        print(name,l,None if p is None else p.strength); print(format_frontier(f,chosen=0.0 if p is None else p.strength),flush=True)
