import time, os, torch, threading, sys, statistics as st
from concurrent.futures import ThreadPoolExecutor
from retrieval.settings import get_settings
from chatbot.lm import LanguageModel
lm=LanguageModel(get_settings()); tok=lm.tokenizer; model=lm.model
ids=tok(["hello world "*110]*3, return_tensors="pt")
ids={k:v[:, :250] for k,v in ids.items()}
def g():
    t=time.perf_counter()
    model.generate(**ids, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    return round(time.perf_counter()-t,3)
mode=sys.argv[1]; ex=ThreadPoolExecutor(1)
def newthread():
    r=[]; th=threading.Thread(target=lambda: r.append(g())); th.start(); th.join(); return r[0]
f={"main":g,"pool":lambda: ex.submit(g).result(),"new":newthread}
seq=mode.split(",")
res={k:[] for k in seq}
for _ in range(6):
    for k in seq: res[k].append(f[k]())
print(mode, {k:(st.median(v), v) for k,v in res.items()})
