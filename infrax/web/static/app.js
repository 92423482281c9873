// infrax's dashboard: live updates over server-sent events, the log as it grows, the job actions.
"use strict";

const page = document.body.dataset.page;

function setState(el, state) {
  if (!el) return;
  el.className = el.className.replace(/\bs-[a-z]+\b/g, "").trim() + " s-" + state;
}

async function refreshRow(jobId, insert) {
  const answer = await fetch(`/fragments/push/${jobId}`);
  if (!answer.ok) return;
  const holder = document.createElement("div");
  holder.innerHTML = (await answer.text()).trim();
  const fresh = holder.querySelector(".push");
  const old = document.querySelector(`.push[data-job="${jobId}"]`);
  if (old) old.replaceWith(fresh);
  else if (insert) document.querySelector("#pushes .pushes").prepend(fresh);
}

function listen(onNews) {
  const source = new EventSource("/events");
  source.onmessage = (event) => {
    const news = JSON.parse(event.data);
    if (news.kind === "reload") location.reload();
    else onNews(news);
  };
  return source;
}

if (page === "push-list") {
  const firstPage = document.body.dataset.firstPage === "yes";
  const pending = new Set();
  listen((news) => {
    const row = document.querySelector(`.push[data-job="${news.job}"]`);
    if (news.kind === "partition") {
      const chunk = document.querySelector(`a.chunk[href="/partitions/${news.partition}"]`);
      if (chunk) { setState(chunk, news.state); return; }
    }
    if (news.kind === "job" && row) {
      setState(row.querySelector(".job-state .state"), news.state);
      row.querySelector(".job-state .state").textContent = news.state;
    }
    // Something the row does not show yet (a new job, a task just planned): redraw it, once.
    if ((row || (firstPage && news.kind === "job")) && !pending.has(news.job) && (news.kind !== "job" || !row)) {
      pending.add(news.job);
      setTimeout(() => { pending.delete(news.job); refreshRow(news.job, firstPage); }, 150);
    }
  });
}

if (page === "job") {
  const jobId = document.body.dataset.job;
  let timer = null;
  listen((news) => {
    if (news.job !== jobId) return;
    if (news.kind === "job") {
      const badge = document.querySelector("#job-state .state");
      setState(badge, news.state); badge.textContent = news.state;
    }
    if (!timer) timer = setTimeout(async () => {  // the tables redrawn from the server, at most 4 times a second
      timer = null;
      const answer = await fetch(location.pathname);
      if (!answer.ok) return;
      const next = new DOMParser().parseFromString(await answer.text(), "text/html");
      document.querySelector("main").replaceWith(next.querySelector("main"));
      bindActions();
    }, 250);
  });
}

function bindActions() {
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.onclick = async () => {
      const result = document.querySelector("#action-result");
      result.textContent = "…";
      const answer = await fetch(`/actions/jobs/${button.dataset.job}/${button.dataset.action}`, {
        method: "POST", headers: { "X-Infrax-Action": "1" },
      });
      const body = await answer.json().catch(() => ({}));
      result.textContent = answer.ok ? `${button.textContent}: job is ${body.state}` : `refused: ${body.detail || answer.status}`;
      result.dataset.outcome = answer.ok ? "done" : "refused";
    };
  }
}
bindActions();

if (page === "partition") {
  const { partition, run } = document.body.dataset;
  const log = document.querySelector("#log");
  const status = document.querySelector("#log-status");
  const failures = document.querySelector("#failure-lines");
  let offset = 0, line = 1;

  function addLines(lines) {
    const part = document.createDocumentFragment();
    for (const item of lines) {
      const div = document.createElement("div");
      div.className = "line" + (item.kind ? ` k-${item.kind}` : "");
      div.id = `L${item.n}`;
      const number = document.createElement("a");
      number.href = `#L${item.n}`; number.textContent = item.n;
      div.append(number, document.createTextNode(item.text));
      part.append(div);
      if (item.kind && failures.children.length < 50) {
        const li = document.createElement("li");
        const link = document.createElement("a");
        link.href = `#L${item.n}`; link.textContent = `line ${item.n}: ${item.text}`;
        li.append(link); failures.append(li);
        document.querySelector("#failures").hidden = false;
      }
    }
    log.append(part);
  }

  async function follow() {
    while (true) {
      const answer = await fetch(`/partitions/${partition}/log?run=${run}&offset=${offset}&line=${line}`);
      if (!answer.ok) { status.textContent = `the log is not available (${answer.status})`; return; }
      const chunk = await answer.json();
      addLines(chunk.lines);
      offset = chunk.offset; line += chunk.lines.length;
      if (chunk.complete) {
        log.dataset.complete = "yes";
        status.textContent = `${line - 1} lines`;
        if (location.hash) document.querySelector(location.hash)?.scrollIntoView();
        return;
      }
      status.textContent = `${line - 1} lines, following the run…`;
      if (!chunk.lines.length) await new Promise((done) => setTimeout(done, 500));
    }
  }
  follow();
  listen((news) => {
    if (news.kind === "partition" && news.partition === partition) {
      const badge = document.querySelector("#partition-state .state");
      setState(badge, news.state); badge.textContent = news.state;
    }
  });
}
