export default function SignIn() {
  return (
    <main>
      <h1 id="page">sign-in</h1>
      <p>Sign-in placeholder (the real sign-in UI needs Clerk's Frontend API).</p>
    </main>
  );
}
