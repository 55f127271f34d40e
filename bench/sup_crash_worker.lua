--- A supervised worker for bench/supervisor_bench.lua that crashes: exit
-- code 1 in its main chunk, so it never gets ready (a crash on start).
os.exit(1)
