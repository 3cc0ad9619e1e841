"""scratch: plain vs fused decode at GPT-2 124M shapes"""
import sys, time, logging, tempfile, statistics
from pathlib import Path
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from export.step import ExportConfig, build_graph
from export.decode_graph import build_for_export, DECODE_FILE
from export.onnx import save_onnx
from export.ort_runner import OrtRunner
from export.ort_decode_runner import OrtDecodeRunner
from evalsuite.latency import measure_latency
log=logging.getLogger("x")
torch.manual_seed(0)
m=GPT2LMHeadModel(GPT2Config()).eval()
tmp=Path(tempfile.mkdtemp())
runners={}
for q in sys.argv[1].split(","):
    cfg=ExportConfig(quantize=q)
    d=tmp/q; d.mkdir()
    (d/"config.json").write_text(m.config.to_json_string())
    g,_=build_graph(cfg,m,{},log); save_onnx(g,d/"model.onnx"); del g
    g,done=build_for_export(cfg,m,{}); print(done); save_onnx(g,d/DECODE_FILE); del g
    runners[f"{q} plain"]=OrtRunner(d/"model.onnx", threads=2)
    runners[f"{q} fused"]=OrtDecodeRunner(d/DECODE_FILE, threads=2)
res={k:[] for k in runners}
for _ in range(int(sys.argv[2]) if len(sys.argv)>2 else 3):
    for k,r in runners.items():
        res[k].append(measure_latency(r,prompt=128,new_tokens=64,repeats=1,warmup=1,threads=2,progress=False))
for k,v in res.items():
    print(k, "prefill %.1f ms, decode %.2f ms/tok"%(statistics.median(x.prefill_ms_p50 for x in v), statistics.median(x.decode_ms_per_token_p50 for x in v)))
