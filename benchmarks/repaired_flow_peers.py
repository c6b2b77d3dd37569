"""The repaired flow peers' table (docs/results.md, "SA-Solver and DEIS on flow models"): per NFE the default,
the best of the report's ten flow peers, the best of ``sa-solver-zero`` / ``sa-solver-3-zero`` / ``deis-zero``,
the default over the best of all, and its standing against all (means over the 3 report seeds, both metrics).

    python benchmarks/repaired_flow_peers.py RUNS MODEL [MODEL ...]

``RUNS`` holds ``z-MODEL/`` (the repaired peers' bench with ``default``) and the report runs named in ``REPORT``.
"""
import json
import sys
from collections import defaultdict
REPORT = {'digits-flow':['r16rep/final-digits-flow','r17rep/final-digits-flow-hi'],
     'digits-flow-b':['r16rep/final-digits-flow-b','r17rep/final-digits-flow-b-hi'],
     'digits-flow-c':['fc/final-a','fc/final-b'],
     'digits-flow-d':['fdd/final-a','fdd/final-b']}
P=set('sa-solver,unipc,dpmpp-2m,dpmpp-2m-sde,flow-euler,sa-solver-3,dpmpp-3m-sde,dpmpp-3m,unipc-2,dpmpp-2s'.split(','))
Z={'sa-solver-zero','sa-solver-3-zero','deis-zero'}
def cells(dirs, keep):
    c=defaultdict(list)
    for d in dirs:
        for x in json.load(open(R + '/' + d + '/results.json')):
            if x['sampler'] in keep: c[(x['sampler'],x['nfe'])].append(x['metrics'])
    return {k:{m:sum(r[m] for r in v)/len(v) for m in ('fd','fd_heldout')} for k,v in c.items() if len(v)==3}
R = sys.argv[1]
for M in sys.argv[2:]:
    old=cells(REPORT[M],P); z=cells(['z-' + M],Z|{'default'})
    print(f'### {M}')
    print('| NFE | default fd / fd_heldout | best of the ten peers | best repaired peer | default / best of all (fd / fd_heldout) | standing |')
    print('|---|---|---|---|---|---|')
    for n in sorted({k[1] for k in z}):
        d=z[('default',n)]
        row=[str(n), f"{d['fd']:.3g} / {d['fd_heldout']:.3g}"]
        bo={m:min((v[m],s) for (s,nn),v in old.items() if nn==n) for m in ('fd','fd_heldout')}
        bz={m:min((v[m],s) for (s,nn),v in z.items() if nn==n and s!='default') for m in ('fd','fd_heldout')}
        row.append(f"{bo['fd'][0]:.3g} ({bo['fd'][1]}) / {bo['fd_heldout'][0]:.3g} ({bo['fd_heldout'][1]})")
        row.append(f"{bz['fd'][0]:.3g} ({bz['fd'][1]}) / {bz['fd_heldout'][0]:.3g} ({bz['fd_heldout'][1]})")
        ba={m:min(bo[m],bz[m]) for m in bo}
        ra=[d[m]/ba[m][0] for m in ('fd','fd_heldout')]
        row.append(f"{ra[0]:.2f} / {ra[1]:.2f}")
        allc={**{k:v for k,v in old.items() if k[1]==n},**{k:v for k,v in z.items() if k[1]==n and k[0]!='default'}}
        dom=[s for (s,nn),v in allc.items() if all(v[m]<d[m] for m in ('fd','fd_heldout'))]
        st='ahead' if all(r<=1 for r in ra) else ('dominated by '+','.join(dom) if dom else ('behind on both' if all(r>1 for r in ra) else 'trade'))
        row.append(st)
        print('| '+' | '.join(row)+' |')
