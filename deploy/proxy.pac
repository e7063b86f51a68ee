// Without a load balancer: browsers pick a PromptFence proxy themselves, and fail over in order.
// Every host goes through a proxy (non-GenAI traffic is passed on untouched), so the choice is
// per client: hash of the client's own address is not available to PAC, so spread by host name.
function FindProxyForURL(url, host) {
  var proxies = ["promptfence1.corp.example:3128", "promptfence2.corp.example:3128"];
  var h = 0;
  for (var i = 0; i < host.length; i++) { h = (h * 31 + host.charCodeAt(i)) % 1000003; }
  var first = proxies[h % proxies.length];
  var second = proxies[(h + 1) % proxies.length];
  return "PROXY " + first + "; PROXY " + second;
}
