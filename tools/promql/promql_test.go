// Prometheus's own PromQL engine, at the release kube-prometheus-stack runs, for the suite's
// queries (tests/promql.py): each case's series (samples at seconds from time 0, where the data
// begins) and the instant result of each query at the time it names. Built once by `make setup`
// as a test binary. The series are held in memory rather than in a TSDB: the engine is what is
// under test, and Prometheus's TSDB would bring its remote-storage and cloud dependencies along.
package promql

import (
	"context"
	"encoding/json"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

type inputSeries struct {
	Labels map[string]string `json:"labels"`
	// [seconds, value] pairs, in time order.
	Samples [][2]float64 `json:"samples"`
}

type query struct {
	Expr string  `json:"expr"`
	At   float64 `json:"at"`
}

type testCase struct {
	Series  []inputSeries `json:"series"`
	Queries []query       `json:"queries"`
}

type outputSample struct {
	Labels map[string]string `json:"labels"`
	Value  float64           `json:"value"`
}

type result struct {
	Samples []outputSample `json:"samples"`
	Error   string         `json:"error,omitempty"`
}

// A float sample as the storage hands it to the engine.
type sample struct {
	t int64
	f float64
}

func (s sample) T() int64                      { return s.t }
func (s sample) ST() int64                     { return 0 }
func (s sample) F() float64                    { return s.f }
func (s sample) H() *histogram.Histogram       { return nil }
func (s sample) FH() *histogram.FloatHistogram { return nil }
func (s sample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s sample) Copy() chunks.Sample           { return s }

type seriesSet struct {
	series []storage.Series
	i      int
}

func (s *seriesSet) Next() bool                        { s.i++; return s.i <= len(s.series) }
func (s *seriesSet) At() storage.Series                { return s.series[s.i-1] }
func (s *seriesSet) Err() error                        { return nil }
func (s *seriesSet) Warnings() annotations.Annotations { return nil }

func queryable(in []inputSeries) storage.Queryable {
	all := make([]storage.Series, 0, len(in))
	for _, s := range in {
		samples := make([]chunks.Sample, 0, len(s.Samples))
		for _, p := range s.Samples {
			samples = append(samples, sample{t: int64(p[0] * 1000), f: p[1]})
		}
		all = append(all, storage.NewListSeries(labels.FromMap(s.Labels), samples))
	}
	sort.Slice(all, func(i, j int) bool { return labels.Compare(all[i].Labels(), all[j].Labels()) < 0 })
	selectFn := func(_ bool, _ *storage.SelectHints, matchers ...*labels.Matcher) storage.SeriesSet {
		set := &seriesSet{}
	series:
		for _, s := range all {
			for _, m := range matchers {
				if !m.Matches(s.Labels().Get(m.Name)) {
					continue series
				}
			}
			set.series = append(set.series, s)
		}
		return set
	}
	return &storage.MockQueryable{MockQuerier: &storage.MockQuerier{SelectMockFunction: selectFn}}
}

func TestCase(t *testing.T) {
	in, out := os.Getenv("PROMQL_CASE"), os.Getenv("PROMQL_OUT")
	if in == "" || out == "" {
		t.Skip("PROMQL_CASE and PROMQL_OUT name the case and where its results go")
	}
	raw, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	var c testCase
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	store := queryable(c.Series)
	// The server's defaults: a 5-minute lookback.
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	results := make([]result, 0, len(c.Queries))
	for _, q := range c.Queries {
		at := time.Unix(0, 0).Add(time.Duration(q.At * float64(time.Second)))
		qry, err := engine.NewInstantQuery(context.Background(), store, nil, q.Expr, at)
		if err != nil {
			results = append(results, result{Error: err.Error()})
			continue
		}
		res := qry.Exec(context.Background())
		r := result{Samples: []outputSample{}}
		if res.Err != nil {
			r.Error = res.Err.Error()
		} else if vec, err := res.Vector(); err != nil {
			r.Error = err.Error()
		} else {
			for _, s := range vec {
				r.Samples = append(r.Samples, outputSample{Labels: s.Metric.Map(), Value: s.F})
			}
		}
		qry.Close()
		results = append(results, r)
	}
	data, err := json.Marshal(results)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
