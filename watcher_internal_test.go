package storage

import (
	"context"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// These tests feed watch responses to the delivery step of the watch loop
// in orders that etcd 3.6 never sends, but older servers and clientv3's own
// stream resumes could.

// withHeader sets resp's header to one at rev. WatchResponse.Header is a
// value in etcd 3.6 and a pointer in 3.7: reflection sets either.
func withHeader(resp clientv3.WatchResponse, rev int64) clientv3.WatchResponse {
	h := reflect.ValueOf(&pb.ResponseHeader{Revision: rev})
	f := reflect.ValueOf(&resp).Elem().FieldByName("Header")
	if f.Kind() != reflect.Pointer {
		h = h.Elem()
	}
	f.Set(h)
	return resp
}

func eventsAt(revs ...int64) clientv3.WatchResponse {
	resp := withHeader(clientv3.WatchResponse{}, revs[len(revs)-1])
	for _, rev := range revs {
		resp.Events = append(resp.Events, putEvent("/p/k", "k", 1, rev))
	}
	return resp
}

func progressAt(rev int64) clientv3.WatchResponse {
	return withHeader(clientv3.WatchResponse{}, rev)
}

func TestDeliverDropsRepeatedEventsButNotEventsAfterAProgressAheadOfThem(t *testing.T) {
	ctx := context.Background()
	w := newWatcher(nil, "/p/", true, nil)
	var got []int64 // revisions that reached the handler
	h := &handlerSink[*testItem]{handle: func(e *Event[*testItem]) error {
		got = append(got, e.Revision)
		return nil
	}}
	require.NoError(t, h.reset(ctx, nil, 10))
	rev, last := int64(10), int64(10) // the stream was asked for the changes after 10

	steps := []struct {
		name       string
		resp       clientv3.WatchResponse
		wantRev    int64
		wantRepeat int64
	}{
		{"events after the start are delivered", eventsAt(11, 12), 12, 0},
		{"a stale progress notification does not move the watch back", progressAt(11), 12, 0},
		{"a resumed stream repeats 11 and 12: only 13 is new", eventsAt(11, 12, 13), 13, 2},
		{"a response of repeats only delivers nothing", eventsAt(13), 13, 3},
		{"a progress notification ahead of events moves the resume revision", progressAt(16), 16, 3},
		{"events it ran ahead of are new, not repeats", eventsAt(14, 15), 15, 3},
		{"later events are delivered", eventsAt(17), 17, 3},
	}
	for _, st := range steps {
		require.NoError(t, w.deliver(ctx, h, st.resp, &rev, &last), st.name)
		require.Equal(t, st.wantRev, rev, st.name)
		require.Equal(t, st.wantRepeat, w.repeats.Load(), st.name)
	}
	require.Equal(t, []int64{11, 12, 13, 14, 15, 17}, got, "each change once, in order")
}
