// Command etcd-load is the Go load client of `cargo xtask bench kv` (workload `go-put`,
// `go-range`): the put and range rows of the benchmark, made with etcd's official Go client
// (go.etcd.io/etcd/clientv3, 3.4) instead of the Rust one, against raft-kv or etcd.
//
// It opens -conns clients (each a gRPC connection), connection i to endpoint i % n of
// -endpoints, as etcd's `benchmark` tool does, makes one untimed put on each (retried while
// the server refuses it), then runs -clients closed-loop clients, client c on connection
// c % conns, until -total operations are made or -secs pass. Operation i is:
//   - put: the 8-byte big-endian key i, one 256-byte random value for the whole run;
//   - range: a linearizable get of key i % -keys, among -keys keys written before timing,
//     whose answer must be that key with its value (else it counts as wrong).
//
// Once connected and warmed up (and the range keys written), it prints `ready` on stdout and
// waits for a line on stdin before timing, so that xtask measures the members' CPU time over
// the timed run only. Then it prints machine-readable lines on stdout, for xtask to parse into
// its table:
//
//	ops N          operations answered
//	errors N       requests that failed
//	wrong N        answers that broke a guarantee
//	secs F         from the first timed request to the last answer
//	cut_short B    true if -secs passed before -total operations were made
//	cpu_secs F     user + system CPU time this process used in the timed run
//	first_error S  the first failure, if any (one line)
//	first_wrong S  the first wrong answer, if any (one line)
//	lat US COUNT   COUNT answers took US microseconds, rounded to 3 significant digits
//	               (as an HDR histogram of precision 3 does)
//
// Build it in GOPATH mode with Debian's packages (golang-go, golang-etcd-server-dev):
//
//	GO111MODULE=off GOPATH=$PWD/xtask/go:/usr/share/gocode go build -o etcd-load etcd-load
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// warmUpTimeout bounds the retries of a connection's untimed first put.
const warmUpTimeout = 30 * time.Second

// warmUpRetry is the pause between those retries.
const warmUpRetry = 100 * time.Millisecond

type options struct {
	endpoints []string
	conns     int
	clients   int
	total     uint64
	op        string
	keys      uint64
	valueLen  int
	timeout   time.Duration
	secs      time.Duration
}

// result is what one client (then the whole run) measured.
type result struct {
	ops, errors, wrong     uint64
	firstError, firstWrong string
	cutShort               bool
	lat                    map[int64]uint64
}

func main() {
	o := parseFlags()
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "etcd-load: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags() options {
	var o options
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated host:port list")
	flag.IntVar(&o.conns, "conns", 1, "gRPC connections")
	flag.IntVar(&o.clients, "clients", 1, "closed-loop clients")
	flag.Uint64Var(&o.total, "total", 10000, "operations in all")
	flag.StringVar(&o.op, "op", "put", "put or range")
	flag.Uint64Var(&o.keys, "keys", 1000, "keys read by range (written before timing)")
	flag.IntVar(&o.valueLen, "value-bytes", 256, "value size")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on one request")
	flag.DurationVar(&o.secs, "secs", 180*time.Second, "bound on the timed run")
	flag.Parse()
	o.endpoints = strings.Split(*endpoints, ",")
	if o.conns < 1 || o.clients < 1 || (o.op != "put" && o.op != "range") || o.keys < 1 {
		fmt.Fprintln(os.Stderr, "etcd-load: need -conns >= 1, -clients >= 1, -keys >= 1, -op put|range")
		os.Exit(2)
	}
	return o
}

func run(o options) error {
	conns, err := connect(o)
	for _, c := range conns {
		defer c.Close()
	}
	if err != nil {
		return err
	}
	value := make([]byte, o.valueLen)
	rand.Read(value)
	if o.op == "range" {
		for k := uint64(0); k < o.keys; k++ {
			if err := put(conns[0], o.timeout, key(k), value); err != nil {
				return fmt.Errorf("writing key %d before timing: %v", k, err)
			}
		}
	}
	cpuReady := cpuSecs()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the go-ahead on stdin: %v", err)
	}
	var next uint64
	results := make([]result, o.clients)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(o.secs)
	for c := 0; c < o.clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			results[c] = client(o, conns[c%len(conns)], &next, deadline, value)
		}(c)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	report(merge(results), secs, cpuSecs()-cpuReady)
	return nil
}

// cpuSecs is the user + system CPU time this process has used, in seconds.
func cpuSecs() float64 {
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// connect opens the connections and makes one untimed put on each.
func connect(o options) ([]*clientv3.Client, error) {
	conns := make([]*clientv3.Client, 0, o.conns)
	for i := 0; i < o.conns; i++ {
		ep := o.endpoints[i%len(o.endpoints)]
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
		if err != nil {
			return conns, fmt.Errorf("cannot connect to %s: %v", ep, err)
		}
		conns = append(conns, c)
	}
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c *clientv3.Client) {
			defer wg.Done()
			errs[i] = warmUp(c, o.timeout)
		}(i, c)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return conns, fmt.Errorf("warm-up put on %s, retried for %v: %v", o.endpoints[i%len(o.endpoints)], warmUpTimeout, err)
		}
	}
	return conns, nil
}

func warmUp(c *clientv3.Client, timeout time.Duration) error {
	deadline := time.Now().Add(warmUpTimeout)
	for {
		err := put(c, timeout, []byte("bench-kv-warm-up"), []byte("x"))
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(warmUpRetry)
	}
}

func put(c *clientv3.Client, timeout time.Duration, k, v []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.Put(ctx, string(k), string(v))
	return err
}

// client is one closed-loop client: it takes operation numbers from next until total.
func client(o options, c *clientv3.Client, next *uint64, deadline time.Time, value []byte) result {
	r := result{lat: make(map[int64]uint64)}
	for {
		i := atomic.AddUint64(next, 1) - 1
		if i >= o.total {
			return r
		}
		if time.Now().After(deadline) {
			r.cutShort = true
			return r
		}
		t0 := time.Now()
		var err error
		var wrong string
		if o.op == "put" {
			err = put(c, o.timeout, key(i), value)
		} else {
			wrong, err = get(c, o.timeout, key(i%o.keys), value)
		}
		took := time.Since(t0).Microseconds()
		switch {
		case err != nil:
			r.errors++
			if r.firstError == "" {
				r.firstError = err.Error()
			}
		case wrong != "":
			r.wrong++
			if r.firstWrong == "" {
				r.firstWrong = wrong
			}
		default:
			r.ops++
			r.lat[round3(took)]++
		}
	}
}

// get reads k linearizably and says what is wrong with the answer, if anything.
func get(c *clientv3.Client, timeout time.Duration, k, want []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := c.Get(ctx, string(k))
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) != 1 || !bytes.Equal(resp.Kvs[0].Key, k) || !bytes.Equal(resp.Kvs[0].Value, want) {
		return fmt.Sprintf("range of key %x answered %d keys, not the key with its value", k, len(resp.Kvs)), nil
	}
	return "", nil
}

func key(i uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], i)
	return k[:]
}

// round3 rounds v down to 3 significant digits.
func round3(v int64) int64 {
	scale := int64(1)
	for v/scale >= 1000 {
		scale *= 10
	}
	return v / scale * scale
}

func merge(rs []result) result {
	all := result{lat: make(map[int64]uint64)}
	for _, r := range rs {
		all.ops += r.ops
		all.errors += r.errors
		all.wrong += r.wrong
		all.cutShort = all.cutShort || r.cutShort
		if all.firstError == "" {
			all.firstError = r.firstError
		}
		if all.firstWrong == "" {
			all.firstWrong = r.firstWrong
		}
		for us, n := range r.lat {
			all.lat[us] += n
		}
	}
	return all
}

func report(r result, secs, cpu float64) {
	fmt.Printf("ops %d\nerrors %d\nwrong %d\nsecs %f\ncut_short %t\ncpu_secs %f\n", r.ops, r.errors, r.wrong, secs, r.cutShort, cpu)
	if r.firstError != "" {
		fmt.Printf("first_error %s\n", oneLine(r.firstError))
	}
	if r.firstWrong != "" {
		fmt.Printf("first_wrong %s\n", oneLine(r.firstWrong))
	}
	for us, n := range r.lat {
		fmt.Printf("lat %d %d\n", us, n)
	}
}

func oneLine(s string) string {
	return strings.ReplaceAll(s, "\n", " ")
}
