#!/bin/sh
# How tests/unit/data/booted-lamp/ was captured (test_observe.py reads it).
# A fresh copy of the bookworm LAMP test tree (tests/lib/trees.py, extracted with
# tar --numeric-owner --xattrs --xattrs-include="*" --acls), this script copied to
# its /root, then, from /work/main, as root:
#   printf "sh /root/rh-capture.sh; exit\n" | script -qc "PYTHONPATH=src /usr/bin/python3 -m apt_rehearse \
#     --root TREE -o APT::Rehearse::Log-Dir=LOG -o APT::Rehearse::Cache-Dir=CACHE shell remove nano" /dev/null
# The shell runs in the rehearsed system after the upgrade and the reboot, services
# running; what the script writes goes out base64-encoded on the terminal, between
# RH-BEGIN and RH-END (the overlay is thrown away with the sandbox). The host was
# a Debian 12 VM with cgroup v1 (cgroup2 beside it): hence the cgroup lines.
# Capture what observe.units / observe.sockets read, in the booted rehearsal.
set -u
out=/root/rh-out
mkdir -p $out
cat > /etc/systemd/system/rh-broken.service <<'EOF'
[Unit]
Description=apt-rehearse capture: a service that fails to start
[Service]
ExecStart=/bin/sh -c 'echo "rh-broken: cannot open /etc/rh-broken.conf" >&2; exit 3'
EOF
cat > /usr/local/bin/rh-listen <<'EOF'
#!/usr/bin/perl
use strict;
use warnings;
use IO::Socket::IP;
my @keep;
push @keep, IO::Socket::IP->new(LocalHost => "0.0.0.0", LocalPort => 8099, Listen => 5, ReuseAddr => 1) || die "tcp: $@";
push @keep, IO::Socket::IP->new(LocalHost => "::1", LocalPort => 8098, Listen => 5, ReuseAddr => 1) || die "tcp6: $@";
push @keep, IO::Socket::IP->new(LocalHost => "0.0.0.0", LocalPort => 5399, Proto => "udp") || die "udp: $@";
push @keep, IO::Socket::IP->new(LocalHost => "::", LocalPort => 5398, Proto => "udp", V6Only => 1) || die "udp6: $@";
# Not listening: both ends of a TCP connection, and a connected UDP socket.
my $client = IO::Socket::IP->new(PeerHost => "127.0.0.1", PeerPort => 8099) || die "connect: $@";
my $server_end = $keep[0]->accept;
my $udp_client = IO::Socket::IP->new(PeerHost => "127.0.0.1", PeerPort => 5399, Proto => "udp") || die "udp connect: $@";
push @keep, $client, $server_end, $udp_client;
sleep 3600;
EOF
chmod 755 /usr/local/bin/rh-listen
cat > /etc/systemd/system/rh-listen.service <<'EOF'
[Unit]
Description=apt-rehearse capture: TCP and UDP listeners
[Service]
ExecStart=/usr/local/bin/rh-listen
EOF
systemctl daemon-reload
systemctl start rh-broken.service
systemctl start rh-listen.service
sleep 2
E="env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true APT_REHEARSE=0"
$E systemctl is-system-running > $out/is-system-running.txt 2>&1 </dev/null
# observe.units: exactly its command, output and error merged as run_command merges them
$E systemctl show --all --property=Id,LoadState,ActiveState,SubState '*.service' '*.socket' > $out/systemctl-show.txt 2>&1 </dev/null
echo $? > $out/systemctl-show.rc
# observe.settle: its answer once the boot is over, then its exit status
$E timeout 20 systemctl is-system-running --wait > $out/is-system-running-wait.txt 2>&1 </dev/null
echo $? >> $out/is-system-running-wait.txt
# observe.journal of the failed unit
$E journalctl --no-pager -o cat -n 15 -u rh-broken.service > $out/journal-rh-broken.txt 2>&1 </dev/null
# observe.sockets: /proc/net/{tcp,tcp6,udp,udp6}
for p in tcp tcp6 udp udp6; do cat /proc/net/$p > $out/proc-net-$p.txt; done
# observe._socket_inodes: each process's cgroup and its fds' links
for d in /proc/[0-9]*/fd; do
  pid=${d#/proc/}; pid=${pid%/fd}
  cg=$(cat /proc/$pid/cgroup 2>/dev/null) || continue
  comm=$(cat /proc/$pid/comm 2>/dev/null)
  echo "pid $pid $comm"
  echo "cgroup $cg"
  for fd in $d/*; do
    t=$(readlink $fd 2>/dev/null) && echo "fd ${fd##*/} $t"
  done
done > $out/proc-fds.txt
ss -tulpn > $out/ss-tulpn.txt 2>&1
tar -C /root -cz rh-out | base64 -w0 > /root/rh-out.b64
echo
echo RH-BEGIN
cat /root/rh-out.b64
echo
echo RH-END
