// Calls grove.v1.Grove Generate (unary) and GenerateStream from Node.js, loading the .proto at run time.
// usage: node client.js HOST:PORT PROTO_ROOT PROMPT MAX_TOKENS  -> prints {"text": ..., "streamed": ...}
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, protoRoot, prompt, maxTokens] = process.argv.slice(2);
const def = loader.loadSync("grove/v1/api.proto", { includeDirs: [protoRoot], keepCase: true, longs: String, defaults: true });
const grove = grpc.loadPackageDefinition(def).grove.v1;
const client = new grove.Grove(address, grpc.credentials.createInsecure());
const req = { prompt, sampling: { max_tokens: Number(maxTokens), temperature: 0 } };

client.Generate(req, (err, resp) => {
  if (err) { console.error(err); process.exit(1); }
  let streamed = "";
  const call = client.GenerateStream(req);
  call.on("data", (m) => { streamed += m.text; });
  call.on("error", (e) => { console.error(e); process.exit(1); });
  call.on("end", () => {
    process.stdout.write(JSON.stringify({ text: resp.text, streamed }));
    client.close();
  });
});
