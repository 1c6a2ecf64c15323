export default function Pricing() {
  return (
    <main>
      <h1 id="page">pricing</h1>
      <p>free / pro</p>
    </main>
  );
}
